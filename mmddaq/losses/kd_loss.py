"""Knowledge distillation from the FP model's logits."""
import torch
from torch import nn
from torch.nn import functional as F

from mmddaq.registry import MODELS


@MODELS.register_module()
class SoftmaxKDLoss(nn.Module):
    """``T^2 * KL(softmax(p / T) || softmax(q / T))``, averaged over samples.

    Args:
        temperature (float): Softening temperature. Defaults to 1.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
    """

    def __init__(self, temperature: float = 1.0, loss_weight: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.loss_weight = loss_weight

    def forward(self, fp_logits: torch.Tensor,
                q_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = F.softmax(fp_logits.detach() / t, dim=-1)
        log_q = F.log_softmax(q_logits / t, dim=-1)
        kl = F.kl_div(log_q, target, reduction='batchmean')
        return self.loss_weight * kl * t * t
