"""Observers: where a quantizer's range (min, max) comes from."""
from typing import Optional

import torch
from torch import nn


def minmax(x: torch.Tensor, ch_axis: Optional[int] = None):
    """Minimum and maximum of ``x``, per channel along ``ch_axis`` or overall.

    Args:
        x (Tensor): The observed tensor.
        ch_axis (int, optional): Channel axis for per-channel ranges.
            ``None`` gives a per-tensor range.

    Returns:
        tuple[Tensor, Tensor]: Detached minimum and maximum.
    """
    x = x.detach()
    if ch_axis is None:
        return x.min(), x.max()
    flat = x.transpose(0, ch_axis).reshape(x.shape[ch_axis], -1)
    return flat.min(dim=1).values, flat.max(dim=1).values


class EMAMinMaxObserver(nn.Module):
    """Per-tensor range as an exponential moving average of batch min/max.

    A *batch* may reach a layer in several calls (a head conv shared by
    all FPN levels runs once per level): calls accumulate into a pending
    min/max, and :meth:`step` (called once per iteration, e.g. by
    :class:`ActivationCalibrationHook`) folds it into the average. The first
    batch sets the range; later ones move it by ``1 - momentum`` of the way
    (GDFQ convention: ``momentum=0.9``). Without any :meth:`step`, the range
    is simply the min/max of everything observed.

    Args:
        momentum (float): Weight of the running value. Defaults to 0.9.
    """

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        if not 0. <= momentum < 1.:
            raise ValueError(f'momentum must be in [0, 1), got {momentum}')
        self.momentum = momentum
        self.register_buffer('min_val', torch.tensor(0.))
        self.register_buffer('max_val', torch.tensor(0.))
        self.register_buffer('num_batches', torch.tensor(0, dtype=torch.long))
        self._pending = None

    @property
    def observed(self) -> bool:
        """bool: Whether anything has been observed."""
        return self._pending is not None or bool(self.num_batches.item() > 0)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> None:
        """Add ``x`` to the current batch's min/max (empty tensors: no-op)."""
        if x.numel() == 0:
            return
        cur_min, cur_max = minmax(x)
        cur_min, cur_max = cur_min.float(), cur_max.float()
        if self._pending is not None:
            cur_min = torch.minimum(cur_min, self._pending[0])
            cur_max = torch.maximum(cur_max, self._pending[1])
        self._pending = (cur_min, cur_max)

    def current_range(self):
        """The range to quantize with now: average with the pending batch.

        Returns:
            tuple[Tensor, Tensor]: Minimum and maximum.
        """
        if self._pending is None:
            return self.min_val, self.max_val
        if self.num_batches.item() == 0:
            return self._pending
        m = self.momentum
        return (self.min_val * m + self._pending[0] * (1 - m),
                self.max_val * m + self._pending[1] * (1 - m))

    @torch.no_grad()
    def step(self) -> None:
        """Close the current batch: fold its min/max into the average."""
        if self._pending is None:
            return
        lo, hi = self.current_range()
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        self.num_batches += 1
        self._pending = None
