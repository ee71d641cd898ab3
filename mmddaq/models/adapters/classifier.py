"""How DDAQ runs and compares image classifiers (mmpretrain)."""
from typing import List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mmddaq.losses import SoftmaxKDLoss
from mmddaq.registry import MODELS


@MODELS.register_module()
class ClassifierAdapter:
    """Task adapter for ``mmpretrain`` classifiers (``ImageClassifier``).

    It tells the algorithm how to get logits, which outputs to compare
    (taps) and how to distil.

    Args:
        taps (Sequence[str], optional): Submodules whose outputs feed the
            discrepancy discriminator. Defaults to every ``layer*`` stage of
            the backbone plus the last linear layer of the head.
        kd_temperature (float): Temperature of the logit KD. Defaults to 1.
    """

    conditional = True

    def __init__(self,
                 taps: Sequence[str] = None,
                 kd_temperature: float = 1.0) -> None:
        self.taps = list(taps) if taps else None
        self.kd = SoftmaxKDLoss(temperature=kd_temperature)

    def default_taps(self, model: nn.Module) -> List[str]:
        """Backbone stages and the head's last linear layer of ``model``."""
        if self.taps:
            return self.taps
        taps = []
        if hasattr(model, 'backbone'):
            taps = [
                f'backbone.{name}'
                for name, _ in model.backbone.named_children()
                if name.startswith('layer')
            ]
        linears = [
            name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith('head')
        ]
        taps += linears[-1:]
        if not taps:
            raise ValueError(
                'Could not find default taps (backbone.layer* and a head '
                f'linear layer) in {type(model).__name__}; set `taps`.')
        return taps

    @staticmethod
    def forward(model: nn.Module,
                inputs: torch.Tensor,
                reference=None) -> torch.Tensor:
        """Logits of ``model`` for normalised ``inputs``.

        ``reference`` (the FP outputs, for adapters whose quantized pass
        depends on them) is not needed by classifiers.
        """
        out = model(inputs, mode='tensor')
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out

    @staticmethod
    def task_loss(fp_out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the FP model against the generator's labels."""
        return F.cross_entropy(fp_out, labels)

    def distill_loss(self, fp_out: torch.Tensor,
                     q_out: torch.Tensor) -> torch.Tensor:
        """KD loss of the quantized outputs towards the FP outputs."""
        return self.kd(fp_out, q_out)

    @staticmethod
    def self_loss(out: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against the model's own predictions (Hessian)."""
        return F.cross_entropy(out, out.detach().argmax(dim=1))

    @staticmethod
    def output_distance(ref: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """KL divergence of ``out``'s softmax from ``ref``'s."""
        return F.kl_div(
            F.log_softmax(out, dim=1),
            F.softmax(ref, dim=1),
            reduction='batchmean')

    @staticmethod
    def agreement(fp_out: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
        """Share of samples on which both models predict the same class."""
        return (fp_out.argmax(1) == q_out.argmax(1)).float().mean()
