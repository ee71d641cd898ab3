"""Observers: where a quantizer's range (min, max) comes from.

Three range estimators, each a registered observer chosen per quantizer in
the config (``act_quantizer=dict(observer=dict(type='mmddaq.MSEObserver'))``,
likewise ``weight_quantizer``):

- :class:`EMAMinMaxObserver` (``minmax``): the observed minimum and maximum;
- :class:`PercentileObserver` (``percentile``): low/high percentiles, which
  ignore rare outliers;
- :class:`MSEObserver` (``mse``): the clipping of the min-max range that
  minimises the Lp error of quantizing the observed values on the actual
  grid (per output channel for weights, per tensor for activations).

Activations are observed batch by batch during calibration; the range is
settled by :meth:`~EMAMinMaxObserver.finalize` when the quantizer freezes.
Weights are searched once, data-free, by :meth:`~EMAMinMaxObserver.search`.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as torch_dist
from torch import nn

from mmddaq.registry import MODELS


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


def _fake_quant_error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                      bits: int, symmetric: bool, p: float) -> torch.Tensor:
    """Mean ``|x - Q(x)|^p`` over the last axis of ``x`` for ranges lo/hi.

    ``x`` is ``(C, N)``; ``lo``/``hi`` are ``(C,)`` (one range per row).
    """
    from .fake_quant import calc_qparams, quant_range
    qmin, qmax = quant_range(bits, symmetric)
    scale, zero_point = calc_qparams(lo, hi, bits, symmetric)
    scale, zero_point = scale[:, None], zero_point[:, None]
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return ((q - zero_point) * scale - x).abs().pow(p).mean(dim=1)


def lp_range_search(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                    bits: int, symmetric: bool, p: float = 2.4,
                    num_candidates: int = 80,
                    min_ratio: float = 0.05) -> Tuple[torch.Tensor,
                                                      torch.Tensor]:
    """Shrink ``[lo, hi]`` per row of ``x`` to the lowest Lp error.

    Candidates are ``ratio * [lo, hi]`` for ``num_candidates`` ratios evenly
    spaced in ``[min_ratio, 1]``; the full range is always a candidate, so
    the result is never worse than min-max on ``x``.

    Args:
        x (Tensor): ``(C, N)`` values, one row per range.
        lo (Tensor): ``(C,)`` minima. hi (Tensor): ``(C,)`` maxima.
        bits (int): Bit-width of the grid.
        symmetric (bool): Symmetric grid.
        p (float): Exponent of the error. Defaults to 2.4.
        num_candidates (int): Ratios tried. Defaults to 80.
        min_ratio (float): Smallest ratio. Defaults to 0.05.

    Returns:
        tuple[Tensor, Tensor]: The best ``(lo, hi)``.
    """
    x = x.float()
    lo, hi = lo.float(), hi.float()
    best_err = torch.full_like(lo, float('inf'))
    best_lo, best_hi = lo.clone(), hi.clone()
    for ratio in torch.linspace(1., min_ratio, num_candidates).tolist():
        err = _fake_quant_error(x, lo * ratio, hi * ratio, bits, symmetric, p)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo * ratio, best_lo)
        best_hi = torch.where(better, hi * ratio, best_hi)
    return best_lo, best_hi


@MODELS.register_module()
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

    @torch.no_grad()
    def reset(self) -> None:
        """Forget everything observed (a new calibration starts)."""
        self.num_batches.zero_()
        self._pending = None

    def finalize(self, bits: int, symmetric: bool) -> None:
        """Settle the range when calibration ends (min-max: nothing to do).

        Args:
            bits (int): Bit-width of the quantizer's grid.
            symmetric (bool): Whether the grid is symmetric.
        """

    def search(self, x: torch.Tensor, ch_axis: Optional[int], bits: int,
               symmetric: bool):
        """Range of a whole tensor at once (weights: data-free).

        Args:
            x (Tensor): The tensor, e.g. a weight.
            ch_axis (int, optional): One range per index of this axis.
            bits (int): Bit-width of the grid.
            symmetric (bool): Whether the grid is symmetric.

        Returns:
            tuple[Tensor, Tensor]: Minimum and maximum.
        """
        return minmax(x, ch_axis)


def _rows(x: torch.Tensor, ch_axis: Optional[int]) -> torch.Tensor:
    x = x.detach().float()
    if ch_axis is None:
        return x.reshape(1, -1)
    return x.transpose(0, ch_axis).reshape(x.shape[ch_axis], -1)


class _SampledObserver(EMAMinMaxObserver):
    """Min-max EMA that also keeps a bounded random sample of the values.

    The sample (at most ``max_samples`` values, drawn uniformly from each
    call) is what :meth:`finalize` searches; it is not saved in the
    ``state_dict`` (the settled range is). Data-parallel calibration
    broadcasts the settled range from rank 0 (see
    :func:`broadcast_ranges`).
    """

    def __init__(self, momentum: float = 0.9,
                 max_samples: int = 2**16) -> None:
        super().__init__(momentum)
        self.max_samples = int(max_samples)
        self._samples = []
        self._num_sampled = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> None:
        super().forward(x)
        if x.numel() == 0:
            return
        flat = x.detach().reshape(-1)
        per_call = max(1, self.max_samples // 16)
        if flat.numel() > per_call:
            idx = torch.randint(0, flat.numel(), (per_call, ),
                                device=flat.device)
            flat = flat[idx]
        self._samples.append(flat.float())
        self._num_sampled += flat.numel()
        if self._num_sampled > self.max_samples:  # keep a uniform subset
            pool = torch.cat(self._samples)
            keep = torch.randperm(pool.numel(),
                                  device=pool.device)[:self.max_samples]
            self._samples = [pool[keep]]
            self._num_sampled = self.max_samples

    def reset(self) -> None:
        super().reset()
        self._samples, self._num_sampled = [], 0

    def _range_of(self, x: torch.Tensor, lo, hi, bits, symmetric):
        raise NotImplementedError

    @torch.no_grad()
    def finalize(self, bits: int, symmetric: bool) -> None:
        self.step()
        if not self._samples or self._num_batches() == 0:
            return
        x = torch.cat(self._samples).reshape(1, -1)
        lo, hi = self._range_of(x, self.min_val.reshape(1),
                                self.max_val.reshape(1), bits, symmetric)
        self.min_val.copy_(lo.reshape(()))
        self.max_val.copy_(hi.reshape(()))
        self._samples, self._num_sampled = [], 0

    def search(self, x, ch_axis, bits, symmetric):
        lo, hi = minmax(x, ch_axis)
        rows = _rows(x, ch_axis)
        lo2, hi2 = self._range_of(rows, lo.reshape(-1).float(),
                                  hi.reshape(-1).float(), bits, symmetric)
        return lo2.reshape(lo.shape), hi2.reshape(hi.shape)


@MODELS.register_module()
class PercentileObserver(_SampledObserver):
    """Range from low/high percentiles of the observed values.

    Args:
        percentile (float): Upper percentile (the lower one is
            ``100 - percentile``). Defaults to 99.99.
        momentum (float): EMA momentum of the min-max it starts from.
        max_samples (int): Values kept for the percentile.
    """

    def __init__(self, percentile: float = 99.99, momentum: float = 0.9,
                 max_samples: int = 2**16) -> None:
        super().__init__(momentum, max_samples)
        if not 50. < percentile <= 100.:
            raise ValueError(
                f'percentile must be in (50, 100], got {percentile}')
        self.percentile = float(percentile)

    def _range_of(self, x, lo, hi, bits, symmetric):
        q = torch.tensor([1. - self.percentile / 100., self.percentile / 100.],
                         device=x.device)
        bounds = torch.quantile(x.float(), q, dim=1)
        return torch.maximum(bounds[0], lo), torch.minimum(bounds[1], hi)


@MODELS.register_module()
class MSEObserver(_SampledObserver):
    """Range that minimises the Lp quantization error (range search).

    Args:
        p (float): Exponent of the error. Defaults to 2.4 (BRECQ's choice).
        num_candidates (int): Clipping ratios tried. Defaults to 80.
        momentum (float): EMA momentum of the min-max it starts from.
        max_samples (int): Values kept for the search (activations).
    """

    def __init__(self, p: float = 2.4, num_candidates: int = 80,
                 momentum: float = 0.9, max_samples: int = 2**16) -> None:
        super().__init__(momentum, max_samples)
        if p <= 0:
            raise ValueError(f'p must be > 0, got {p}')
        self.p = float(p)
        self.num_candidates = int(num_candidates)

    def _range_of(self, x, lo, hi, bits, symmetric):
        return lp_range_search(x, lo, hi, bits, symmetric, self.p,
                               self.num_candidates)


def build_observer(cfg: Optional[dict], momentum: float = 0.9) -> nn.Module:
    """Build an observer from its config (default: EMA min-max).

    Args:
        cfg (dict, optional): Observer config; ``type`` defaults to
            ``'mmddaq.EMAMinMaxObserver'``.
        momentum (float): Default EMA momentum. Defaults to 0.9.
    """
    cfg = dict(cfg or {})
    cfg.setdefault('type', 'mmddaq.EMAMinMaxObserver')
    cfg.setdefault('momentum', momentum)
    return MODELS.build(cfg)


def broadcast_ranges(observers: Sequence[EMAMinMaxObserver],
                     src: int = 0) -> None:
    """Give every rank rank ``src``'s settled ranges (a no-op alone).

    Args:
        observers (Sequence[EMAMinMaxObserver]): The same observers, in
            the same order, on every rank.
        src (int): Rank whose ranges win. Defaults to 0.
    """
    from mmddaq.utils.dist import broadcast_
    broadcast_([t for o in observers for t in (o.min_val, o.max_val)], src)


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
