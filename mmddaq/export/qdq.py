"""Modules that run a quantized layer the way its ONNX graph will.

Each module computes, in PyTorch, exactly what the exported
``QuantizeLinear`` / ``DequantizeLinear`` (QDQ) nodes compute, and tells
the TorchScript ONNX exporter which nodes to emit (``symbolic``):

- :class:`QDQActivation`: per-tensor ``QuantizeLinear -> DequantizeLinear``
  of a layer input, uint8 (asymmetric grid) or int8 (symmetric grid). A grid
  narrower than the 8-bit type (e.g. 4 bits) is kept by a ``Clip`` in real
  units in front of ``QuantizeLinear`` whose bounds are the grid's first and
  last level, so the integers that reach ``DequantizeLinear`` never leave
  the low-bit grid.
- :class:`QDQConv2d` / :class:`QDQLinear`: the weight is an int8
  initializer read by a per-channel (axis 0) ``DequantizeLinear``; the
  input goes through an optional :class:`QDQActivation`; the bias stays in
  floating point.
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from mmddaq.quantization.quantizers import CallSites

#: Integer range of the ONNX 8-bit types, by signedness.
INT8_RANGE = (-128, 127)
UINT8_RANGE = (0, 255)


class _QuantDequant(torch.autograd.Function):
    """Per-tensor fake quantization exported as QuantizeLinear/Dequantize."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        return torch.fake_quantize_per_tensor_affine(
            x, scale, zero_point.to(torch.int32), qmin, qmax)

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin, qmax):
        q = g.op('QuantizeLinear', x, scale, zero_point)
        return g.op('DequantizeLinear', q, scale, zero_point)


class _DequantizeWeight(torch.autograd.Function):
    """Per-channel (axis 0) dequantization of an integer weight."""

    @staticmethod
    def forward(ctx, qweight, scale, zero_point):
        shape = (-1, ) + (1, ) * (qweight.dim() - 1)
        return (qweight.float() - zero_point.float().reshape(shape)) * \
            scale.reshape(shape)

    @staticmethod
    def symbolic(g, qweight, scale, zero_point):
        return g.op('DequantizeLinear', qweight, scale, zero_point, axis_i=0)


class QDQActivation(nn.Module):
    """Per-tensor activation quantization on an integer grid.

    Args:
        scale (float): Step of the grid.
        zero_point (int): Integer level that represents 0.
        grid (tuple[int, int]): ``(qmin, qmax)`` of the trained grid, e.g.
            ``(0, 15)`` for 4-bit asymmetric.
    """

    def __init__(self, scale: float, zero_point: int,
                 grid: Tuple[int, int]) -> None:
        super().__init__()
        qmin, qmax = int(grid[0]), int(grid[1])
        signed = qmin < 0
        type_min, type_max = INT8_RANGE if signed else UINT8_RANGE
        if not type_min <= qmin < qmax <= type_max:
            raise ValueError(f'grid {grid} does not fit an 8-bit type')
        if not qmin <= zero_point <= qmax:
            raise ValueError(
                f'zero point {zero_point} lies outside the grid {grid}: '
                'the range cannot be exported as 8-bit QuantizeLinear')
        if not scale > 0:
            raise ValueError(f'scale must be positive, got {scale}')
        self.qmin, self.qmax = qmin, qmax
        self.full_range = (qmin, qmax) == (type_min, type_max)
        dtype = torch.int8 if signed else torch.uint8
        self.register_buffer('scale', torch.tensor(float(scale)))
        self.register_buffer('zero_point',
                             torch.tensor(int(zero_point), dtype=dtype))
        # The grid's end points in real units (used when it is narrower
        # than the 8-bit type).
        self.low = (qmin - zero_point) * float(scale)
        self.high = (qmax - zero_point) * float(scale)

    @property
    def bits(self) -> int:
        """int: Number of bits of the grid."""
        return int(self.qmax - self.qmin + 1).bit_length() - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.full_range:
            x = torch.clamp(x, self.low, self.high)
        return _QuantDequant.apply(x, self.scale, self.zero_point, self.qmin,
                                   self.qmax)

    def extra_repr(self) -> str:
        return (f'scale={self.scale.item():.6g}, '
                f'zero_point={int(self.zero_point)}, '
                f'grid=({self.qmin}, {self.qmax})')


class QDQCallSites(CallSites):
    """One :class:`QDQActivation` per call of a layer run several times per
    forward, used in turn (its own Q/DQ pair per call in the exported
    graph); see :class:`~mmddaq.quantization.quantizers.CallSites`.
    """


class _QDQWeightMixin:
    """Integer weight + per-channel scale, or a float weight."""

    def _init_weight(self, weight: torch.Tensor, bias: Optional[torch.Tensor],
                     qweight: Optional[torch.Tensor],
                     scale: Optional[torch.Tensor],
                     zero_point: Optional[torch.Tensor],
                     act: Optional[nn.Module]) -> None:
        self.act = act
        if qweight is None:
            self.register_buffer('weight', weight.detach().clone())
            self.qweight = self.weight_scale = self.weight_zero_point = None
        else:
            if qweight.dtype != torch.int8:
                raise TypeError('qweight must be int8')
            self.weight = None
            self.register_buffer('qweight', qweight)
            self.register_buffer('weight_scale', scale.float().flatten())
            self.register_buffer('weight_zero_point',
                                 zero_point.to(torch.int8).flatten())
        self.register_buffer(
            'bias', None if bias is None else bias.detach().float().clone())

    @property
    def quantized(self) -> bool:
        """bool: Whether the weight is exported through DequantizeLinear."""
        return self.qweight is not None

    def real_weight(self) -> torch.Tensor:
        """Tensor: The weight in real units, as the graph computes it."""
        if self.qweight is None:
            return self.weight
        return _DequantizeWeight.apply(self.qweight, self.weight_scale,
                                       self.weight_zero_point)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)


class QDQConv2d(_QDQWeightMixin, nn.Module):
    """A 2-D convolution with QDQ weight and input, ready for export.

    Args:
        conv (nn.Conv2d): Source of the convolution's hyper-parameters.
        weight (Tensor): Float weight (used when ``qweight`` is None).
        bias (Tensor, optional): Float bias.
        qweight (Tensor, optional): int8 weight.
        scale (Tensor, optional): Per-output-channel scale of ``qweight``.
        zero_point (Tensor, optional): Per-output-channel zero point.
        act (QDQActivation, optional): Input quantization.
    """

    def __init__(self,
                 conv: nn.Conv2d,
                 weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None,
                 qweight: Optional[torch.Tensor] = None,
                 scale: Optional[torch.Tensor] = None,
                 zero_point: Optional[torch.Tensor] = None,
                 act: Optional[QDQActivation] = None) -> None:
        super().__init__()
        if conv.padding_mode != 'zeros':
            raise NotImplementedError(
                f'padding_mode="{conv.padding_mode}" is not supported by '
                'the exporter (only zero padding)')
        self.stride = conv.stride
        self.padding = conv.padding
        self.dilation = conv.dilation
        self.groups = conv.groups
        self._init_weight(weight, bias, qweight, scale, zero_point, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            self._input(x), self.real_weight(), self.bias, self.stride,
            self.padding, self.dilation, self.groups)


class QDQLinear(_QDQWeightMixin, nn.Module):
    """A linear layer with QDQ weight and input, ready for export.

    Args:
        weight (Tensor): Float weight (used when ``qweight`` is None).
        bias (Tensor, optional): Float bias.
        qweight (Tensor, optional): int8 weight.
        scale (Tensor, optional): Per-output-channel scale of ``qweight``.
        zero_point (Tensor, optional): Per-output-channel zero point.
        act (QDQActivation, optional): Input quantization.
    """

    def __init__(self,
                 weight: torch.Tensor,
                 bias: Optional[torch.Tensor] = None,
                 qweight: Optional[torch.Tensor] = None,
                 scale: Optional[torch.Tensor] = None,
                 zero_point: Optional[torch.Tensor] = None,
                 act: Optional[QDQActivation] = None) -> None:
        super().__init__()
        self._init_weight(weight, bias, qweight, scale, zero_point, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._input(x), self.real_weight(), self.bias)
