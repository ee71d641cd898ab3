"""Rounding with a straight-through estimator and the quantization grid.

This file holds the arithmetic only: how a real tensor is mapped onto an
integer grid and back. Where the range comes from lives in ``observers.py``;
which tensors get quantized lives in ``quantizers.py`` and ``modules.py``.
"""
from typing import Tuple

import torch

#: Bit-widths a quantizer accepts; 16 means "leave in floating point".
SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
PASS_THROUGH_BITS = 16


def check_bits(bits: int, what: str = 'bit-width') -> int:
    """Validate a bit-width and return it.

    Args:
        bits (int): Requested number of bits.
        what (str): What the bits are for, used in the error message.

    Returns:
        int: ``bits`` unchanged.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) \
            or bits not in SUPPORTED_BITS:
        raise ValueError(
            f'Unsupported {what} {bits!r}: mmddaq quantizes to 2-8 bits, '
            f'and 16 means pass-through (floating point).')
    return bits


def quant_range(bits: int, symmetric: bool) -> Tuple[int, int]:
    """Integer range ``(qmin, qmax)`` of a ``bits``-bit grid.

    Args:
        bits (int): Number of bits.
        symmetric (bool): Signed grid centred on zero if True, unsigned
            grid with a zero point otherwise.

    Returns:
        tuple[int, int]: The smallest and largest integer level.
    """
    if symmetric:
        return -(2**(bits - 1)), 2**(bits - 1) - 1
    return 0, 2**bits - 1


class _RoundSTE(torch.autograd.Function):
    """Round in the forward pass, identity in the backward pass."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` with a straight-through gradient."""
    return _RoundSTE.apply(x)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Return ``x`` unchanged whose gradient is multiplied by ``factor``."""
    return (x - x * factor).detach() + x * factor


def calc_qparams(min_val: torch.Tensor, max_val: torch.Tensor, bits: int,
                 symmetric: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point that map ``[min_val, max_val]`` onto the grid.

    The range is widened to include zero so that zero is exactly
    representable (zero padding and ReLU outputs stay exact).

    Args:
        min_val (Tensor): Minimum, per channel or a scalar.
        max_val (Tensor): Maximum, same shape as ``min_val``.
        bits (int): Number of bits.
        symmetric (bool): Whether the grid is symmetric around zero.

    Returns:
        tuple[Tensor, Tensor]: ``scale`` (float) and ``zero_point``
        (float holding integer values), shaped like ``min_val``.
    """
    qmin, qmax = quant_range(bits, symmetric)
    min_val = torch.clamp(min_val, max=0.)
    max_val = torch.clamp(max_val, min=0.)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        absmax = torch.maximum(-min_val, max_val)
        scale = torch.clamp(absmax / ((qmax - qmin) / 2), min=eps)
        zero_point = torch.zeros_like(scale)
    else:
        scale = torch.clamp((max_val - min_val) / (qmax - qmin), min=eps)
        zero_point = torch.clamp(qmin - torch.round(min_val / scale), qmin,
                                 qmax)
    return scale, zero_point


def _one_grid_levels(x: torch.Tensor, scale: torch.Tensor,
                     zero_point: torch.Tensor, qmin: int, qmax: int):
    """``round(x / scale)`` for a one-element grid read as host numbers
    (``1 / scale`` in float32, as the tensor kernels compute it), with the
    step and the clamp bounds ``[qmin - z, qmax - z]`` of the integer zero
    point ``z`` (small integers are exact in float32)."""
    zp = float(round(float(zero_point)))
    inv = float(torch.reciprocal(scale.float()))
    return torch.mul(x, inv).round_(), float(scale), qmin - zp, qmax - zp


class _FakeQuantizeCPU(torch.autograd.Function):
    """Fake quantization with a fixed grid from vectorised element-wise ops.

    The values ``torch.fake_quantize_per_{tensor,channel}_affine`` compute
    (round half to even of ``x * (1 / scale)``, plus the zero point,
    clamped to the grid, back to real units) with the same gradient mask,
    but several times faster on CPU, where PyTorch's fused kernels do not
    vectorise (``tests/test_quantizers.py`` checks the equality). With one
    grid for the tensor a value that rounds to zero from below comes out
    as ``-0.0`` where PyTorch gives ``+0.0``: equal as numbers (and in
    every sum, product and comparison), one pass fewer than cleaning the
    sign.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        if scale.numel() == 1:
            # one grid: the bounds and step are host numbers
            levels, step, lo, hi = _one_grid_levels(x, scale, zero_point,
                                                    qmin, qmax)
            if not ctx.needs_input_grad[0]:
                return levels.clamp_(lo, hi).mul_(step)
            clamped = levels.clamp(lo, hi)
            ctx.save_for_backward(_inside(levels, clamped))
            return clamped.mul_(step)
        levels = torch.round(x * torch.reciprocal(scale)).add_(zero_point)
        if not ctx.needs_input_grad[0]:
            return levels.clamp_(qmin, qmax).sub_(zero_point).mul_(scale)
        clamped = levels.clamp(qmin, qmax)
        ctx.save_for_backward(_inside(levels, clamped))
        return clamped.sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return grad * inside, None, None, None, None


def _inside(levels: torch.Tensor, clamped: torch.Tensor) -> torch.Tensor:
    """1.0 where ``levels`` lies on the grid (its clamp left it unchanged),
    0.0 where it was clipped or is NaN: the straight-through gradient mask,
    as a float tensor because on CPU a float comparison result and a float
    product take about half the time of a boolean mask's (``ge``, ``le``,
    ``and``, then a promoting product)."""
    return torch.eq(levels, clamped, out=torch.empty_like(levels))


def fake_quantize_torch(x, scale, zero_point, qmin, qmax):
    """PyTorch's fused ``fake_quantize_per_{tensor,channel}_affine``
    kernels, for a fixed grid (``scale`` broadcastable against ``x``)."""
    if scale.numel() == 1:
        return torch.fake_quantize_per_tensor_affine(
            x, scale.reshape(()).float(),
            zero_point.reshape(()).round().int(), qmin, qmax)
    axis = next(i for i, n in enumerate(scale.shape) if n > 1)
    return torch.fake_quantize_per_channel_affine(
        x, scale.flatten().float(), zero_point.flatten().round().int(), axis,
        qmin, qmax)


def fake_quantize_cpu(x, scale, zero_point, qmin, qmax):
    """The same on CPU from vectorised ops (:class:`_FakeQuantizeCPU`);
    one grid for the tensor and no gradient wanted: no autograd node."""
    if scale.numel() == 1 and not (x.requires_grad
                                   and torch.is_grad_enabled()):
        levels, step, lo, hi = _one_grid_levels(x, scale, zero_point, qmin,
                                                qmax)
        return levels.clamp_(lo, hi).mul_(step)
    return _FakeQuantizeCPU.apply(x, scale.float(),
                                  zero_point.round().float(), qmin, qmax)


#: device type -> fixed-grid fake quantization of float32 tensors
FIXED_GRID_KERNELS = {'cpu': fake_quantize_cpu}


def fake_quantize(x: torch.Tensor, scale: torch.Tensor,
                  zero_point: torch.Tensor, bits: int,
                  symmetric: bool) -> torch.Tensor:
    """Quantize and dequantize ``x`` (straight-through rounding).

    ``scale`` and ``zero_point`` must broadcast against ``x``. Gradients
    reach ``x`` where it lies inside the grid's range (clipped values get
    none) and reach ``scale`` if it requires grad (LSQ-style learning).

    Args:
        x (Tensor): Tensor to quantize.
        scale (Tensor): Step size of the grid.
        zero_point (Tensor): Integer level that represents 0.
        bits (int): Number of bits.
        symmetric (bool): Whether the grid is symmetric around zero.

    Returns:
        Tensor: ``x`` rounded to the grid, in real units.
    """
    qmin, qmax = quant_range(bits, symmetric)
    zero_point = zero_point.detach()
    if not scale.requires_grad and x.dtype == torch.float32:
        kernel = FIXED_GRID_KERNELS.get(x.device.type, fake_quantize_torch)
        return kernel(x, scale, zero_point, qmin, qmax)
    v = x / scale + zero_point
    # Gradient 1 where x rounds into [qmin, qmax], 0 where it is clipped
    # (the rule of torch.fake_quantize_*; torch.clamp would give 0 exactly
    # at the bounds).
    rounded = torch.round(v.detach())
    inside = (rounded >= qmin) & (rounded <= qmax)
    v = torch.where(inside, v, v.detach().clamp(qmin, qmax))
    q = round_ste(v)
    return (q - zero_point) * scale
