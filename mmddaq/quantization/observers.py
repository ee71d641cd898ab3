"""Observers: where a quantizer's range (min, max) comes from."""
from typing import Optional, Sequence

import torch
import torch.distributed as torch_dist
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
        self._host = {}

    def _num_batches(self) -> int:
        return host_value(self.num_batches, self._host, 'num_batches')

    @property
    def observed(self) -> bool:
        """bool: Whether anything has been observed."""
        return self._pending is not None or self._num_batches() > 0

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
        if self._num_batches() == 0:
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


def host_value(t: torch.Tensor, cache: dict, key: str):
    """``t.item()``, re-read from the device only after ``t`` changed.

    Reading a CUDA scalar synchronises the device; quantizers ask for the
    same few flags in every forward. The cached value is keyed by the
    tensor's identity, storage and in-place version counter, so loading a
    state dict, broadcasting buffers or ``copy_``/``fill_`` all invalidate
    it.

    Args:
        t (Tensor): A one-element tensor.
        cache (dict): Where the value is kept (one per module).
        key (str): Name of the value in ``cache``.
    """
    signature = (id(t), t.data_ptr(), t._version)
    hit = cache.get(key)
    if hit is None or hit[0] != signature:
        hit = (signature, t.item())
        cache[key] = hit
    return hit[1]


@torch.no_grad()
def all_reduce_pending(observers: Sequence[EMAMinMaxObserver],
                       group=None) -> None:
    """Give every rank the range of the whole global batch before a step.

    In data-parallel calibration each rank observes only its own batch.
    This replaces each observer's pending min/max by the minimum of the
    ranks' minima and the maximum of their maxima (one all-reduce for all
    observers), so the following :meth:`EMAMinMaxObserver.step` gives
    identical ranges on every rank: those of the global batch. An observer
    that saw nothing on some rank takes the others' range. A no-op in a
    single process.

    Args:
        observers (Sequence[EMAMinMaxObserver]): The same observers, in the
            same order, on every rank (it is a collective call).
        group (ProcessGroup, optional): Defaults to the default group.
    """
    if not observers or not (torch_dist.is_available()
                             and torch_dist.is_initialized()) \
            or torch_dist.get_world_size(group) == 1:
        return
    device = observers[0].min_val.device
    inf = torch.tensor(float('inf'), device=device)
    lows = [o._pending[0] if o._pending is not None else inf
            for o in observers]
    highs = [o._pending[1] if o._pending is not None else -inf
             for o in observers]
    packed = torch.stack(lows + [-h for h in highs]).float()
    torch_dist.all_reduce(packed, op=torch_dist.ReduceOp.MIN, group=group)
    n = len(observers)
    seen = torch.isfinite(packed[:n]).tolist()
    for i, obs in enumerate(observers):
        obs._pending = (packed[i], -packed[n + i]) if seen[i] else None
