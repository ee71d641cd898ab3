"""Fake quantizers for weights and activations.

A quantizer owns its range (an observer or a learnable step) and applies
:func:`fake_quantize`. It knows nothing about the layer it serves.
"""
import contextlib
import math
from typing import Optional

import torch
from torch import nn

from mmddaq.registry import MODELS
from .fake_quant import (PASS_THROUGH_BITS, calc_qparams, check_bits,
                         fake_quantize, quant_range, scale_grad)
from .observers import build_observer, host_value, minmax


def _resize_buffers_on_load(module: nn.Module, names, state_dict,
                            prefix: str) -> None:
    """Let buffers whose shape is set after construction load any shape."""
    for name in names:
        key = prefix + name
        if key in state_dict and \
                state_dict[key].shape != getattr(module, name).shape:
            setattr(module, name,
                    torch.empty_like(state_dict[key],
                                     device=getattr(module, name).device))


@MODELS.register_module()
class WeightQuantizer(nn.Module):
    """Per-output-channel min-max fake quantizer for weights.

    Args:
        bits (int): Bit-width, 2-8, or 16 for pass-through. Defaults to 4.
        symmetric (bool): Symmetric signed grid if True, asymmetric with a
            zero point otherwise. Defaults to False.
        per_channel (bool): One range per output channel (axis 0) if True,
            one for the whole tensor otherwise. Defaults to True.
        learnable (bool): Learn the step size (LSQ) starting from the
            min-max step. Requires :meth:`init_from` before use.
            Defaults to False.
        observer (dict, optional): Range estimator searched once on the
            weight by :meth:`init_from` (e.g. ``dict(type='mmddaq.MSEObserver')``);
            the found clipping is kept as a per-channel ratio of the
            min-max range, so it follows the weight during fine-tuning.
            Defaults to min-max (no clipping).
    """

    def __init__(self,
                 bits: int = 4,
                 symmetric: bool = False,
                 per_channel: bool = True,
                 learnable: bool = False,
                 observer: Optional[dict] = None) -> None:
        super().__init__()
        self.bits = check_bits(bits, 'weight bit-width')
        self.symmetric = symmetric
        self.per_channel = per_channel
        self.learnable = learnable
        self.observer_cfg = dict(observer) if observer else None
        self.scale = None
        self._cache = None
        # {weight key: output} while a forward shares one fake-quantized
        # weight among calls (see quantize_weights_once); None otherwise
        self._forward_cache = None
        # empty = not used; set by init_from (range search) and fix_qparams
        # (learned rounding): [lo_ratio, hi_ratio] per channel, and the
        # scale / zero point a reconstructed weight was rounded to
        self.register_buffer('clip_ratio', torch.empty(0))
        self.register_buffer('fixed_scale', torch.empty(0))
        self.register_buffer('fixed_zero_point', torch.empty(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _resize_buffers_on_load(
            self, ('clip_ratio', 'fixed_scale', 'fixed_zero_point'),
            state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def enabled(self) -> bool:
        """bool: False when the quantizer passes weights through."""
        return self.bits != PASS_THROUGH_BITS

    def _range(self, weight: torch.Tensor):
        ch_axis = 0 if self.per_channel else None
        min_val, max_val = minmax(weight, ch_axis)
        if self.clip_ratio.numel():
            min_val = min_val * self.clip_ratio[0]
            max_val = max_val * self.clip_ratio[1]
        return min_val, max_val

    def _qparams(self, weight: torch.Tensor):
        if self.fixed_scale.numel():
            return self.fixed_scale, self.fixed_zero_point
        min_val, max_val = self._range(weight)
        return calc_qparams(min_val, max_val, self.bits, self.symmetric)

    @torch.no_grad()
    def qparams(self, weight: torch.Tensor):
        """Scale and zero point this quantizer uses for ``weight`` now.

        Args:
            weight (Tensor): The weight it serves.

        Returns:
            tuple[Tensor, Tensor]: Detached ``scale`` and ``zero_point``
            (per output channel, or scalars per tensor).
        """
        scale, zero_point = self._qparams(weight)
        if self.learnable and self.scale is not None \
                and not self.fixed_scale.numel():
            scale = self.scale.detach().abs() + 1e-8
            if not self.symmetric:
                min_val, _ = self._range(weight)
                zero_point = torch.round(-min_val.clamp(max=0.) / scale)
        return scale.detach(), zero_point.detach()

    @torch.no_grad()
    def fix_qparams(self, scale: torch.Tensor,
                    zero_point: torch.Tensor) -> None:
        """Quantize with this scale and zero point from now on.

        Used once a weight has been rounded onto a grid for good (learned
        rounding): the grid must not move with the weight's new min-max.
        """
        self.fixed_scale = scale.detach().clone().float()
        self.fixed_zero_point = zero_point.detach().clone().float()
        self._cache = None

    def _broadcast(self, t: torch.Tensor, weight: torch.Tensor):
        if t.dim() == 0 or not self.per_channel:
            return t
        return t.reshape(-1, *([1] * (weight.dim() - 1)))

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        """Search the range (observer) and create the learnable step.

        Args:
            weight (Tensor): The weight this quantizer will serve.
        """
        self._cache = None  # the grid may change: no stale weights
        if self.observer_cfg and self.enabled:
            ch_axis = 0 if self.per_channel else None
            observer = build_observer(self.observer_cfg)
            lo, hi = minmax(weight, ch_axis)
            lo2, hi2 = observer.search(weight, ch_axis, self.bits,
                                       self.symmetric)
            ratio = lambda a, b: torch.where(b.abs() > 0, a / b,
                                             torch.ones_like(a))
            self.clip_ratio = torch.stack([ratio(lo2, lo), ratio(hi2, hi)
                                           ]).float()
        if self.learnable and self.enabled:
            scale, _ = self._qparams(weight)
            self.scale = nn.Parameter(scale.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``weight``."""
        if not self.enabled:
            return weight
        if self._forward_cache is not None:
            # one forward: a layer called several times (a head shared by
            # all FPN levels) quantizes its weight once, with autograd too
            key = (id(weight), weight._version, torch.is_grad_enabled())
            out = self._forward_cache.get(key)
            if out is None:
                out = self._fake_quantize(weight)
                self._forward_cache[key] = out
            return out
        # Without autograd (evaluation, calibration) the fake-quantized
        # weight is reused until the weight changes in place.
        reuse = not self.learnable and not (torch.is_grad_enabled()
                                            and weight.requires_grad)
        key = (id(weight), weight.data_ptr(), weight._version, weight.dtype)
        if reuse and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        out = self._fake_quantize(weight)
        if reuse and not torch.is_inference_mode_enabled():
            self._cache = (key, out)
        else:
            self._cache = None
        return out

    def _fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self._qparams(weight)
        if self.learnable and not self.fixed_scale.numel():
            if self.scale is None:
                raise RuntimeError(
                    'WeightQuantizer(learnable=True) was used before '
                    'init_from(weight) created its step size.')
            _, qmax = quant_range(self.bits, self.symmetric)
            factor = 1. / math.sqrt(weight[0].numel() * qmax)
            scale = scale_grad(self.scale.abs() + 1e-8, factor)
            if not self.symmetric:
                min_val, _ = self._range(weight)
                zero_point = torch.round(-min_val.clamp(max=0.) /
                                         scale.detach())
        return fake_quantize(weight, self._broadcast(scale, weight),
                             self._broadcast(zero_point, weight), self.bits,
                             self.symmetric)

    def extra_repr(self) -> str:
        obs = (self.observer_cfg or {}).get('type', 'minmax')
        return (f'bits={self.bits}, symmetric={self.symmetric}, '
                f'per_channel={self.per_channel}, learnable={self.learnable}'
                f', observer={obs}')


@MODELS.register_module()
class ActivationQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantizer for activations.

    It has two states, both saved in its ``state_dict``:

    - *calibrating* (initial): every batch updates an EMA of the batch
      min/max (:class:`EMAMinMaxObserver`) and is quantized with that range;
    - *frozen*: the range no longer moves. With ``learnable=True`` the step
      size becomes a parameter initialised from the calibrated range (LSQ).

    A frozen quantizer that never saw a batch raises an error instead of
    quantizing with a meaningless range.

    Args:
        bits (int): Bit-width, 2-8, or 16 for pass-through. Defaults to 4.
        symmetric (bool): Symmetric grid if True. Defaults to False.
        momentum (float): EMA momentum of the observer. Defaults to 0.9.
        learnable (bool): Learn the step after freezing. Defaults to False.
        observer (dict, optional): Range estimator (``mmddaq.MSEObserver``,
            ``mmddaq.PercentileObserver``, ...). Defaults to EMA min-max.
    """

    def __init__(self,
                 bits: int = 4,
                 symmetric: bool = False,
                 momentum: float = 0.9,
                 learnable: bool = False,
                 observer: Optional[dict] = None) -> None:
        super().__init__()
        self.bits = check_bits(bits, 'activation bit-width')
        self.symmetric = symmetric
        self.learnable = learnable
        self.layer_name = ''
        # Not saved: evaluation switches observation off temporarily.
        self.observing = True
        # Not saved: QDrop keeps this share of elements in floating point
        # while a block is reconstructed.
        self.drop_prob = 0.
        self.observer = build_observer(observer, momentum)
        self.register_buffer('frozen', torch.tensor(False))
        self._host = {}
        # Not saved: results shared within one forward, see
        # :func:`quantize_inputs_once`
        self._forward_results: Optional[dict] = None
        if learnable:
            self.scale = nn.Parameter(torch.tensor(1.))
        else:
            self.scale = None

    @property
    def enabled(self) -> bool:
        """bool: False when the quantizer passes activations through."""
        return self.bits != PASS_THROUGH_BITS

    @property
    def calibrated(self) -> bool:
        """bool: Whether the range has been observed at least once."""
        return self.observer.observed

    def calibrate(self) -> None:
        """Go back to the calibrating state (ranges follow the data)."""
        self.frozen.fill_(False)

    def step(self) -> None:
        """Close a calibration batch (see :class:`EMAMinMaxObserver`)."""
        self.observer.step()

    @torch.no_grad()
    def freeze(self) -> None:
        """Stop updating the range; initialise the learnable step from it."""
        self.observer.step()
        if self.enabled and not self.calibrated:
            raise RuntimeError(self._uncalibrated_msg())
        if self.enabled and not self.is_frozen():
            self.observer.finalize(self.bits, self.symmetric)
        if self.learnable and self.enabled and not self.is_frozen():
            scale, _ = self._range_qparams()
            self.scale.copy_(scale)
        self.frozen.fill_(True)

    def _uncalibrated_msg(self) -> str:
        return (f'Activation quantizer of layer "{self.layer_name}" has no '
                'calibrated range: run calibration forwards (at least one '
                'batch) before freezing activation ranges.')

    def _range_qparams(self):
        min_val, max_val = self.observer.current_range()
        return calc_qparams(min_val, max_val, self.bits, self.symmetric)

    @torch.no_grad()
    def qparams(self):
        """Scale and zero point this quantizer uses now (detached).

        Returns:
            tuple[Tensor, Tensor]: Per-tensor ``scale`` and ``zero_point``.
        """
        scale, zero_point = self._range_qparams()
        if self.learnable and self.is_frozen():
            scale = self.scale.detach().abs() + 1e-8
            if not self.symmetric:
                zero_point = torch.round(
                    -self.observer.current_range()[0].clamp(max=0.) / scale)
        return scale, zero_point

    @torch.no_grad()
    def start_step_learning(self) -> nn.Parameter:
        """Learn the step of a frozen range from here on (LSQ).

        Returns:
            nn.Parameter: The step, initialised from the current range.
        """
        if not self.is_frozen():
            raise RuntimeError(f'layer "{self.layer_name}": freeze the '
                               'range before learning its step')
        if not self.learnable:
            self.scale = nn.Parameter(self._range_qparams()[0].clone())
            self.learnable = True
        return self.scale

    @torch.no_grad()
    def bake_learned_step(self) -> None:
        """Write the learned step back into the range; stop learning it.

        The range becomes the one whose grid is exactly the learned
        (scale, zero point), so the model keeps its structure (no extra
        parameter) and exports as before.
        """
        if not self.learnable:
            return
        scale, zero_point = self.qparams()
        qmin, qmax = quant_range(self.bits, self.symmetric)
        if self.symmetric:
            half = scale * (qmax - qmin) / 2
            lo, hi = -half, half
        else:
            lo = (qmin - zero_point) * scale
            hi = lo + scale * (qmax - qmin)
        self.observer.min_val.copy_(lo.reshape(()))
        self.observer.max_val.copy_(hi.reshape(()))
        self.learnable = False
        self.scale = None
        self._host.pop('qparams', None)

    def is_frozen(self) -> bool:
        """bool: Whether the range is frozen (no device sync when cached)."""
        return bool(host_value(self.frozen, self._host, 'frozen'))

    def _frozen_qparams(self, dtype: torch.dtype):
        """``_range_qparams`` of a frozen range, computed once per range,
        and the range as host numbers (read once per range)."""
        obs = self.observer
        key = (dtype, ) + tuple((id(t), t.data_ptr(), t._version)
                                for t in (obs.min_val, obs.max_val))
        hit = self._host.get('qparams')
        if hit is None or hit[0] != key:
            scale, zero_point = self._range_qparams()
            grid = (float(scale), float(zero_point), dtype)
            hit = (key, (scale.to(dtype), zero_point.to(dtype)), grid)
            self._host['qparams'] = hit
        return hit[1], hit[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (and observe it while calibrating)."""
        if not self.enabled or x.numel() == 0:
            # nothing to quantize (e.g. no RoIs): no range needed either
            return x
        out = self._quantize(x)
        if self.drop_prob > 0:  # QDrop: keep some elements unquantized
            keep = torch.rand_like(x) < self.drop_prob
            out = torch.where(keep, x, out)
        return out

    def _quantize(self, x: torch.Tensor) -> torch.Tensor:
        frozen = self.is_frozen()
        if not frozen and self.observing:
            self.observer(x)
        if not self.calibrated:
            raise RuntimeError(self._uncalibrated_msg())
        if frozen and not self.learnable and \
                self.observer._pending is None:
            (scale, zero_point), grid = self._frozen_qparams(x.dtype)
            return self._fake_quantize_once(x, scale, zero_point, grid)
        scale, zero_point = self._range_qparams()
        if self.learnable and frozen:
            _, qmax = quant_range(self.bits, self.symmetric)
            factor = 1. / math.sqrt(x[0].numel() * qmax)
            learned = scale_grad(self.scale.abs() + 1e-8, factor)
            if not self.symmetric:
                zero_point = torch.round(
                    -self.observer.current_range()[0].clamp(max=0.) /
                    learned.detach())
            scale = learned
        return fake_quantize(x, scale.to(x.dtype), zero_point.to(x.dtype),
                             self.bits, self.symmetric)

    def _fake_quantize_once(self, x: torch.Tensor, scale: torch.Tensor,
                            zero_point: torch.Tensor,
                            grid: tuple) -> torch.Tensor:
        """Fake-quantize ``x`` on a frozen grid; inside
        :func:`quantize_inputs_once`, once per tensor and grid."""
        shared = self._forward_results
        if shared is None or not torch.is_grad_enabled() or \
                torch.jit.is_tracing() or torch.compiler.is_compiling():
            return fake_quantize(x, scale, zero_point, self.bits,
                                 self.symmetric)
        key = (id(x), x._version, x.requires_grad, grid, self.bits,
               self.symmetric)
        hit = shared.get(key)
        # the entry holds ``x``: no other tensor can have taken its id
        if hit is not None and hit[1]._version == hit[2]:
            return hit[1]
        out = fake_quantize(x, scale, zero_point, self.bits, self.symmetric)
        shared[key] = (x, out, out._version)
        return out

    def extra_repr(self) -> str:
        return (f'bits={self.bits}, symmetric={self.symmetric}, '
                f'learnable={self.learnable}, '
                f'observer={type(self.observer).__name__}')


@contextlib.contextmanager
def quantize_inputs_once(model: nn.Module):
    """Within the block, a tensor read by several quantized layers on the
    same frozen activation grid is fake-quantized once.

    A block's input feeds its first conv and the downsample; an FPN level
    feeds the class and box towers: one quantizer per layer, usually with
    the same grid (calibrated on the same tensors). Inside the block, with
    autograd on, the first result is reused by the others, keyed by the
    tensor, its in-place version and ``requires_grad``, and the grid;
    values and gradients are what each quantizer computes on its own.
    Results are held until the block ends (autograd keeps them for the
    backward pass anyway): use it around one forward, as
    :func:`quantize_weights_once`. Without autograd nothing is shared.

    Args:
        model (nn.Module): The quantized model.
    """
    quantizers = [m for m in model.modules()
                  if isinstance(m, ActivationQuantizer) and m.enabled]
    shared: dict = {}
    for q in quantizers:
        q._forward_results = shared
    try:
        yield model
    finally:
        for q in quantizers:
            q._forward_results = None
        shared.clear()


@contextlib.contextmanager
def quantize_weights_once(model: nn.Module):
    """Within the block, each weight is fake-quantized once.

    A layer called several times in one forward (a RetinaNet head conv runs
    once per FPN level) reuses its fake-quantized weight, autograd graph
    included, so its gradient is the same as if each call had quantized
    the weight itself. Use it around a single forward: a graph freed by a
    backward pass must not be reused by the next forward.

    Args:
        model (nn.Module): The quantized model.
    """
    quantizers = [m for m in model.modules()
                  if isinstance(m, WeightQuantizer) and m.enabled]
    for q in quantizers:
        q._forward_cache = {}
    try:
        yield model
    finally:
        for q in quantizers:
            q._forward_cache = None


class CallSites(nn.Module):
    """Modules used in turn, one per call within a forward.

    The owning module resets the turn at the start of each forward (see
    :func:`~mmddaq.quantization.model_quantizer.reset_call_sites`); the turn
    also wraps around after the last site. ``forced_site`` (not saved) pins
    one site, for a layer run on its own inputs call by call.

    Args:
        sites (Iterable[nn.Module]): One module per call, in call order.
    """

    def __init__(self, sites) -> None:
        super().__init__()
        self.sites = nn.ModuleList(sites)
        if not len(self.sites):
            raise ValueError('CallSites needs at least one site')
        self.next_site = 0
        self.forced_site = None

    @property
    def num_sites(self) -> int:
        """int: Number of call sites."""
        return len(self.sites)

    def reset_calls(self) -> None:
        """The next call is the first of a forward."""
        self.next_site = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the current call's site on ``x``."""
        if self.forced_site is not None:
            return self.sites[self.forced_site](x)
        site = self.next_site % len(self.sites)
        self.next_site = site + 1
        return self.sites[site](x)

    def extra_repr(self) -> str:
        return f'num_sites={self.num_sites}'


@MODELS.register_module()
class CallSiteQuantizer(CallSites):
    """One activation range per call site of a layer run several times per
    forward.

    A RetinaNet head conv is shared by all FPN levels, whose inputs differ
    in scale by an order of magnitude: one range sized for the coarsest
    level flattens the finest. This quantizer holds one
    :class:`ActivationQuantizer` per call and uses them in turn
    (:class:`CallSites`). Every site is an ordinary activation quantizer,
    so calibration, freezing, observers, LSQ steps and export treat each
    one as its own range.

    Args:
        num_sites (int): Calls per forward (e.g. the number of FPN levels).
        **kwargs: Config of each site's :class:`ActivationQuantizer`.
    """

    def __init__(self, num_sites: int, **kwargs) -> None:
        if int(num_sites) < 1:
            raise ValueError(f'num_sites must be >= 1, got {num_sites}')
        super().__init__(
            ActivationQuantizer(**kwargs) for _ in range(int(num_sites)))

    @property
    def bits(self) -> int:
        """int: Bit-width (the same for every site)."""
        return self.sites[0].bits

    @property
    def enabled(self) -> bool:
        """bool: False when the sites pass activations through."""
        return self.sites[0].enabled

    @property
    def layer_name(self) -> str:
        """str: Name of the layer served (sites say ``name@call k``)."""
        return self.sites[0].layer_name.split('@')[0]

    @layer_name.setter
    def layer_name(self, name: str) -> None:
        for k, site in enumerate(self.sites):
            site.layer_name = f'{name}@call {k}'
