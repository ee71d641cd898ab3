"""Learned rounding of weights (AdaRound).

Instead of rounding every weight to the nearest grid level, AdaRound learns
for each weight whether to round down or up, so that a layer's (or a
block's) output matches the full-precision one. A continuous variable
``alpha`` per weight gives a soft rounding offset ``h(alpha)`` in [0, 1]
(rectified sigmoid); a regulariser annealed from a flat to a steep shape
pushes every ``h`` to 0 or 1, after which the rounding is hard.
"""
import torch
from torch import nn

from .fake_quant import quant_range
from .quantizers import WeightQuantizer

#: Stretch of the rectified sigmoid (AdaRound's zeta and gamma).
ZETA, GAMMA = 1.1, -0.1


class AdaRoundQuantizer(nn.Module):
    """Soft-then-hard learned rounding of one weight on a fixed grid.

    Swapped in for a layer's :class:`WeightQuantizer` while its block is
    reconstructed. The grid (scale, zero point) is the one the original
    quantizer uses for the weight (min-max or range-searched); only the
    rounding direction is learned.

    Args:
        quantizer (WeightQuantizer): The quantizer it replaces.
        weight (Tensor): The weight it serves (not modified).
    """

    def __init__(self, quantizer: WeightQuantizer,
                 weight: torch.Tensor) -> None:
        super().__init__()
        self.bits = quantizer.bits
        self.symmetric = quantizer.symmetric
        scale, zero_point = quantizer.qparams(weight)
        shape = (-1, ) + (1, ) * (weight.dim() - 1)
        if scale.dim() == 0 or scale.numel() == 1:
            shape = ()
        self.register_buffer('scale', scale.reshape(shape).float())
        self.register_buffer('zero_point', zero_point.reshape(shape).float())
        with torch.no_grad():
            w = weight.detach().float() / self.scale
            self.register_buffer('w_floor', torch.floor(w))
            rest = (w - self.w_floor).clamp(0.01, 0.99)
            # h(alpha) == rest at the start: soft rounding = the weight
            alpha = -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)
        self.alpha = nn.Parameter(alpha)
        self.hard = False

    @property
    def grid_scale(self) -> torch.Tensor:
        """Tensor: The scale, shaped like the quantizer's ``qparams``."""
        return self.scale.flatten() if self.scale.dim() else self.scale

    @property
    def grid_zero_point(self) -> torch.Tensor:
        """Tensor: The zero point, shaped like the quantizer's."""
        return self.zero_point.flatten() if self.zero_point.dim() \
            else self.zero_point

    def soft_offset(self) -> torch.Tensor:
        """Tensor: ``h(alpha)`` in [0, 1], the learned rounding offset."""
        return torch.clamp(
            torch.sigmoid(self.alpha) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def offset(self) -> torch.Tensor:
        """Tensor: The offset in use: soft, or 0/1 once hard."""
        if self.hard:
            return (self.alpha >= 0).to(self.alpha.dtype)
        return self.soft_offset()

    def regularizer(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2h - 1|^beta)``: zero when every offset is 0 or 1."""
        return (1 - (2 * self.soft_offset() - 1).abs().pow(beta)).sum()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight rounded by the learned offsets (``weight`` unused:
        the grid and floor were taken when this quantizer was made)."""
        qmin, qmax = quant_range(self.bits, self.symmetric)
        q = torch.clamp(self.w_floor + self.offset() + self.zero_point, qmin,
                        qmax)
        return ((q - self.zero_point) * self.scale).to(weight.dtype)

    @torch.no_grad()
    def integer_levels(self) -> torch.Tensor:
        """Tensor: The hard integer level of every weight."""
        qmin, qmax = quant_range(self.bits, self.symmetric)
        hard = (self.alpha >= 0).float()
        return torch.clamp(self.w_floor + hard + self.zero_point, qmin, qmax)


class TemperatureDecay:
    """AdaRound's annealing of the regulariser's exponent ``beta``.

    ``beta`` falls from ``start`` to ``end`` between ``warmup`` (a share of
    the iterations during which the regulariser is off) and the end.

    Args:
        iters (int): Total iterations.
        warmup (float): Share of iterations without regulariser.
        start (float): First ``beta``. end (float): Last ``beta``.
    """

    def __init__(self, iters: int, warmup: float = 0.2, start: float = 20.,
                 end: float = 2.) -> None:
        self.iters = iters
        self.start_iter = int(warmup * iters)
        self.start, self.end = start, end

    def __call__(self, it: int):
        """``beta`` at iteration ``it``, or None while the regulariser is
        off."""
        if it < self.start_iter:
            return None
        span = max(1, self.iters - self.start_iter)
        frac = min(1., (it - self.start_iter) / span)
        return self.end + (self.start - self.end) * (1 - frac)
