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

    The first observed batch sets the range; later batches move it by
    ``1 - momentum`` of the way (GDFQ convention: ``momentum=0.9``).

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

    @property
    def observed(self) -> bool:
        """bool: Whether at least one batch has been observed."""
        return bool(self.num_batches.item() > 0)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> None:
        """Update the running range with the batch ``x``."""
        cur_min, cur_max = minmax(x)
        cur_min = cur_min.float()
        cur_max = cur_max.float()
        if not self.observed:
            self.min_val.copy_(cur_min)
            self.max_val.copy_(cur_max)
        else:
            m = self.momentum
            self.min_val.mul_(m).add_(cur_min, alpha=1 - m)
            self.max_val.mul_(m).add_(cur_max, alpha=1 - m)
        self.num_batches += 1
