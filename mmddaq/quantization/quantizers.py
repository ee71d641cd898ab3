"""Fake quantizers for weights and activations.

A quantizer owns its range (an observer or a learnable step) and applies
:func:`fake_quantize`. It knows nothing about the layer it serves.
"""
import math

import torch
from torch import nn

from mmddaq.registry import MODELS
from .fake_quant import (PASS_THROUGH_BITS, calc_qparams, check_bits,
                         fake_quantize, quant_range, scale_grad)
from .observers import EMAMinMaxObserver, host_value, minmax


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
    """

    def __init__(self,
                 bits: int = 4,
                 symmetric: bool = False,
                 per_channel: bool = True,
                 learnable: bool = False) -> None:
        super().__init__()
        self.bits = check_bits(bits, 'weight bit-width')
        self.symmetric = symmetric
        self.per_channel = per_channel
        self.learnable = learnable
        self.scale = None
        self._cache = None

    @property
    def enabled(self) -> bool:
        """bool: False when the quantizer passes weights through."""
        return self.bits != PASS_THROUGH_BITS

    def _qparams(self, weight: torch.Tensor):
        ch_axis = 0 if self.per_channel else None
        min_val, max_val = minmax(weight, ch_axis)
        return calc_qparams(min_val, max_val, self.bits, self.symmetric)

    def _broadcast(self, t: torch.Tensor, weight: torch.Tensor):
        if t.dim() == 0 or not self.per_channel:
            return t
        return t.reshape(-1, *([1] * (weight.dim() - 1)))

    @torch.no_grad()
    def init_from(self, weight: torch.Tensor) -> None:
        """Create the learnable step from the weight's min-max range.

        Args:
            weight (Tensor): The weight this quantizer will serve.
        """
        if self.learnable and self.enabled:
            scale, _ = self._qparams(weight)
            self.scale = nn.Parameter(scale.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``weight``."""
        if not self.enabled:
            return weight
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
        if self.learnable:
            if self.scale is None:
                raise RuntimeError(
                    'WeightQuantizer(learnable=True) was used before '
                    'init_from(weight) created its step size.')
            _, qmax = quant_range(self.bits, self.symmetric)
            factor = 1. / math.sqrt(weight[0].numel() * qmax)
            scale = scale_grad(self.scale.abs() + 1e-8, factor)
            if not self.symmetric:
                min_val, _ = minmax(weight, 0 if self.per_channel else None)
                zero_point = torch.round(-min_val.clamp(max=0.) /
                                         scale.detach())
        return fake_quantize(weight, self._broadcast(scale, weight),
                             self._broadcast(zero_point, weight), self.bits,
                             self.symmetric)

    def extra_repr(self) -> str:
        return (f'bits={self.bits}, symmetric={self.symmetric}, '
                f'per_channel={self.per_channel}, learnable={self.learnable}')


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
    """

    def __init__(self,
                 bits: int = 4,
                 symmetric: bool = False,
                 momentum: float = 0.9,
                 learnable: bool = False) -> None:
        super().__init__()
        self.bits = check_bits(bits, 'activation bit-width')
        self.symmetric = symmetric
        self.learnable = learnable
        self.layer_name = ''
        # Not saved: evaluation switches observation off temporarily.
        self.observing = True
        self.observer = EMAMinMaxObserver(momentum)
        self.register_buffer('frozen', torch.tensor(False))
        self._host = {}
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

    def is_frozen(self) -> bool:
        """bool: Whether the range is frozen (no device sync when cached)."""
        return bool(host_value(self.frozen, self._host, 'frozen'))

    def _frozen_qparams(self, dtype: torch.dtype):
        """``_range_qparams`` of a frozen range, computed once per range."""
        obs = self.observer
        key = (dtype, ) + tuple((id(t), t.data_ptr(), t._version)
                                for t in (obs.min_val, obs.max_val))
        hit = self._host.get('qparams')
        if hit is None or hit[0] != key:
            scale, zero_point = self._range_qparams()
            hit = (key, (scale.to(dtype), zero_point.to(dtype)))
            self._host['qparams'] = hit
        return hit[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (and observe it while calibrating)."""
        if not self.enabled or x.numel() == 0:
            # nothing to quantize (e.g. no RoIs): no range needed either
            return x
        frozen = self.is_frozen()
        if not frozen and self.observing:
            self.observer(x)
        if not self.calibrated:
            raise RuntimeError(self._uncalibrated_msg())
        if frozen and not self.learnable and \
                self.observer._pending is None:
            scale, zero_point = self._frozen_qparams(x.dtype)
            return fake_quantize(x, scale, zero_point, self.bits,
                                 self.symmetric)
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

    def extra_repr(self) -> str:
        return (f'bits={self.bits}, symmetric={self.symmetric}, '
                f'learnable={self.learnable}')
