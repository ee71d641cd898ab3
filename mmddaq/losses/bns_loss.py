"""D1: the BatchNorm-statistics discriminator."""
from typing import Dict, List, Mapping, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmddaq.registry import MODELS
from mmddaq.utils.recorder import OutputRecorder


def batchnorm_layers(model: nn.Module) -> List[str]:
    """Names of the BatchNorm layers of ``model`` that track statistics."""
    return [
        name for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
        and m.running_mean is not None
    ]


class _ShiftedMoments(torch.autograd.Function):
    """Per-channel ``E[x - shift]`` and variance of ``x``, with a one-pass
    backward: the gradient to ``x`` is ``a + b * x`` per channel (one
    ``addcmul``) instead of the chain of products and sums autograd builds
    from the formulas."""

    @staticmethod
    def forward(ctx, x, shift):
        dims = [0] + list(range(2, x.dim()))
        view = (1, -1) + (1, ) * (x.dim() - 2)
        dtype = torch.promote_types(x.dtype, torch.float32)
        shift = shift.detach().to(dtype).view(view)
        y = x.to(dtype) - shift
        n = x.numel() // x.shape[1]
        mean_shift = y.sum(dims) / n
        var = y.square_().sum(dims) / n - mean_shift * mean_shift
        ctx.save_for_backward(x, shift, mean_shift)
        ctx.n, ctx.view = n, view
        return mean_shift, var

    @staticmethod
    def backward(ctx, g_mean, g_var):
        x, shift, mean_shift = ctx.saved_tensors
        # d mean / dx = 1 / n; d var / dx = 2 (x - shift - mean_shift) / n
        b = 2. * g_var / ctx.n
        a = g_mean / ctx.n - b * mean_shift
        a, b = a.view(ctx.view), b.view(ctx.view)
        grad = torch.addcmul(a - b * shift, x.to(a.dtype), b)
        return grad.to(x.dtype), None


def shifted_moments(x: torch.Tensor, shift: torch.Tensor) -> tuple:
    """Per-channel batch mean minus ``shift``, and batch variance.

    Sums over the shifted input (``E[y]`` and ``E[y^2] - E[y]^2`` with
    ``y = x - shift``) instead of ``torch.var_mean``: on CPU that reduction
    over the batch and spatial axes of an NCHW tensor, forward and backward,
    takes about three times as long as two plain sums. Shifting by a value
    near the batch mean (a BN layer's running mean) keeps the subtraction
    ``E[y^2] - E[y]^2`` accurate in float32. The gradient to ``x`` is one
    per-channel multiply-add.

    Args:
        x (Tensor): ``(N, C, ...)`` input of a BN layer.
        shift (Tensor): ``(C, )`` per-channel shift (no gradient flows to
            it).

    Returns:
        tuple[Tensor, Tensor]: ``mean(x) - shift`` and the biased variance
        of ``x``, both ``(C, )``, at least in float32.
    """
    return _ShiftedMoments.apply(x, shift)


def bn_input_moments(bn: nn.Module, inputs: tuple, output) -> tuple:
    """Recorded per BN call: its input's :func:`shifted_moments` around the
    layer's running mean."""
    return shifted_moments(inputs[0], bn.running_mean)


def bn_statistics_loss(moments: Mapping[str, list],
                       bns: Mapping[str, nn.Module],
                       weights: Optional[Mapping[str, float]] = None
                       ) -> torch.Tensor:
    """D1 of one batch: ``sum_l w_l (||mu_l(x) - mu_l|| + ||var_l(x) -
    var_l||) / L``.

    Args:
        moments (Mapping[str, list]): BN name -> recorded
            :func:`bn_input_moments` (one per call; the last one counts).
        bns (Mapping[str, nn.Module]): The ``L`` BN layers by name.
        weights (Mapping[str, float], optional): Per-layer weights (1 for
            layers missing there).

    Returns:
        Tensor: The loss.
    """
    total = 0.
    for name, calls in moments.items():
        mean_shift, var = calls[-1]
        dist = torch.norm(mean_shift) + torch.norm(var - bns[name].running_var)
        total = total + float((weights or {}).get(name, 1.)) * dist
    return total / len(bns)


@MODELS.register_module()
class BNStatisticsLoss(nn.Module):
    """Distance between batch statistics and a model's BN running statistics.

    Inside :meth:`recording`, hooks on the full-precision model's BatchNorm
    layers record the per-channel mean and variance of each batch's input
    (an :class:`OutputRecorder`); calling the module then returns

    ``sum_l w_l (||mu_l(x) - mu_l||_2 + ||var_l(x) - var_l||_2) / L``

    with layer weights ``w_l`` (the layer importance of the conv feeding
    the BN, mean 1; all ones by default). It tells the generator how far a
    batch is from looking like the data the model was trained on.

    Args:
        model (nn.Module): The full-precision model.
        layers (list[str], optional): BN layers to use; all by default.
        loss_weight (float): Multiplier of the loss. Defaults to 1.
    """

    def __init__(self,
                 model: nn.Module,
                 layers: Optional[List[str]] = None,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.layer_names = list(layers) if layers else batchnorm_layers(model)
        if not self.layer_names:
            raise ValueError(
                f'{type(model).__name__} has no BatchNorm layers with running '
                'statistics, so the BN-statistics discriminator (D1) has '
                'nothing to match. Disable it (loss weight bns=0) or use a '
                'model with BatchNorm.')
        self.loss_weight = loss_weight
        self.layer_weights: Dict[str, float] = {
            n: 1.0
            for n in self.layer_names
        }
        modules = dict(model.named_modules())
        self._bns = {n: modules[n] for n in self.layer_names}
        self._recorder = OutputRecorder(model, self.layer_names,
                                        record=bn_input_moments)

    def recording(self):
        """Context in which forward passes of the model are recorded."""
        return self._recorder.recording()

    def set_layer_weights(self, weights: Dict[str, float]) -> None:
        """Set per-BN-layer weights (missing layers keep weight 1)."""
        self.layer_weights = {
            n: float(weights.get(n, 1.0))
            for n in self.layer_names
        }

    def remove(self) -> None:
        """Detach the hooks from the model."""
        self._recorder.remove()

    def forward(self) -> torch.Tensor:
        """Loss of the batch seen by the last recorded forward pass (the
        recorded moments are dropped)."""
        moments, self._recorder.outputs = self._recorder.outputs, {}
        if not moments:
            raise RuntimeError(
                'BNStatisticsLoss saw no forward pass: run the '
                'full-precision model inside its recording() first.')
        return self.loss_weight * bn_statistics_loss(
            moments, self._bns, self.layer_weights)
