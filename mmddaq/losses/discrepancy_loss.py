"""D2: the discrepancy discriminator between FP and quantized outputs."""
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from mmddaq.registry import MODELS
from mmddaq.utils.nested import flatten_tensors


def normalized_mse(fp, q, eps: float = 1e-8) -> torch.Tensor:
    """``||fp - q||^2 / ||fp||^2`` over all tensors of ``fp``/``q``.

    Scale-free, so taps of very different magnitude (stage features,
    logits, box deltas) can be summed with plain weights. The denominator
    is a constant for autograd: a generator maximising the discrepancy must
    not raise it by shrinking the FP features.
    """
    fps, qs = flatten_tensors(fp), flatten_tensors(q)
    if len(fps) != len(qs) or not fps:
        raise ValueError('FP and quantized tap outputs do not match')
    num = sum(((a.float() - b.float())**2).sum() for a, b in zip(fps, qs))
    den = sum((a.detach().float()**2).sum() for a in fps)
    return num / (den + eps)


@MODELS.register_module()
class DiscrepancyLoss(nn.Module):
    """Importance-weighted FP-vs-quantized discrepancy at named taps.

    ``sum_t w_t d(P_t(x), Q_t(x)) / T`` with ``d`` the normalised squared
    error. The generator maximises it (samples where the quantized model
    is wrong), the quantized model minimises it.

    Args:
        taps (Sequence[str]): Names of submodules whose outputs are compared
            (present in both models under the same names).
        loss_weight (float): Multiplier of the loss. Defaults to 1.
    """

    def __init__(self, taps: Sequence[str], loss_weight: float = 1.0) -> None:
        super().__init__()
        if not taps:
            raise ValueError('DiscrepancyLoss needs at least one tap')
        self.taps = list(taps)
        self.loss_weight = loss_weight
        self.tap_weights: Dict[str, float] = {t: 1.0 for t in self.taps}

    def set_tap_weights(self, weights: Dict[str, float]) -> None:
        """Set per-tap weights (missing taps keep weight 1)."""
        self.tap_weights = {t: float(weights.get(t, 1.0)) for t in self.taps}

    def forward(self,
                fp_outputs: Dict[str, object],
                q_outputs: Dict[str, object],
                per_tap: Optional[dict] = None) -> torch.Tensor:
        """Weighted mean discrepancy over taps.

        Args:
            fp_outputs (dict): Tap name -> full-precision output.
            q_outputs (dict): Tap name -> quantized output.
            per_tap (dict, optional): If given, filled with the unweighted
                distance of each tap (detached floats), for logging.

        Returns:
            Tensor: The scalar loss.
        """
        total = 0.
        for tap in self.taps:
            d = normalized_mse(fp_outputs[tap], q_outputs[tap])
            if per_tap is not None:
                per_tap[tap] = float(d.detach())
            total = total + self.tap_weights[tap] * d
        return self.loss_weight * total / len(self.taps)
