"""Turn a (fake-)quantized network into QDQ modules with BatchNorm folded.

Where BatchNorm sits: mmddaq trains the quantized model with BatchNorm
*unfolded* and in floating point after each convolution, i.e. the model it
evaluates computes ``BN(conv(Qa(x), Qw(W)) + b)`` with ``Qw`` the trained
per-channel weight quantizer. Re-quantizing the folded weight
``W * gamma / sigma`` with the same quantizer would give a different
network from the one trained and evaluated. The exporter therefore folds
*after* weight quantization, which is exact: with ``Qw(W) = (q - z) * s``
per output channel and ``k = gamma / sqrt(var + eps)``,

    BN(conv(x, Qw(W)) + b) = conv(x, (q - z) * (s * k)) + (b - mean) * k + beta

so the exported integers ``q`` and zero points ``z`` are the trained ones
and only the per-channel scale absorbs BatchNorm (``s * |k|``; a channel
with ``k < 0`` stores its grid mirrored, ``q -> qmin + qmax - q``, so the
scale stays positive).
"""
import copy
from collections import defaultdict
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from mmddaq.quantization import (QuantConv2d, QuantLinear,
                                 observation_disabled)
from mmddaq.quantization.fake_quant import quant_range
from mmddaq.quantization.quantizers import (ActivationQuantizer,
                                            CallSiteQuantizer,
                                            WeightQuantizer)
from .qdq import QDQActivation, QDQCallSites, QDQConv2d, QDQLinear

_BN = nn.modules.batchnorm._BatchNorm


def _exact_layer(module: nn.Module) -> bool:
    """Layers the converter knows the forward of."""
    return type(module) in (nn.Conv2d, nn.Linear, QuantConv2d, QuantLinear)


def trace_layers(model: nn.Module,
                 inputs: torch.Tensor,
                 before_layer: Optional[Callable[[str, nn.Module],
                                                 None]] = None):
    """Run ``inputs`` once; record the layers that ran and conv -> BN pairs.

    A BatchNorm is paired with a conv/linear layer only if, on every call,
    it read that layer's output and the layer's output went to it (a layer
    shared between several inputs, or a BatchNorm fed by anything else, is
    left unfolded).

    Args:
        model (nn.Module): The network, in eval mode.
        inputs (Tensor): A probe input.
        before_layer (Callable, optional): Called with ``(name, module)``
            before each conv/linear layer runs (e.g. to check it).

    Returns:
        tuple[dict[str, str], set[str]]: ``{batchnorm name: layer name}``
        and the names of the conv/linear layers that ran.
    """
    produced = {}
    layer_calls = defaultdict(int)
    bn_calls = defaultdict(int)
    pair_calls = defaultdict(int)
    sources = defaultdict(set)
    handles = []

    def pre_hook(name):

        def hook(module, args):
            before_layer(name, module)

        return hook

    def layer_hook(name):

        def hook(module, args, output):
            layer_calls[name] += 1
            produced[id(output)] = (name, output)

        return hook

    def bn_hook(name):

        def hook(module, args):
            bn_calls[name] += 1
            src = produced.get(id(args[0]))
            if src is not None and src[1] is args[0]:
                sources[name].add(src[0])
                pair_calls[(src[0], name)] += 1
            else:
                sources[name].add(None)

        return hook

    for name, m in model.named_modules():
        if _exact_layer(m):
            if before_layer is not None:
                handles.append(m.register_forward_pre_hook(pre_hook(name)))
            handles.append(m.register_forward_hook(layer_hook(name)))
        elif isinstance(m, _BN):
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad(), observation_disabled(model):
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    pairs = {}
    used = set()
    for bn, srcs in sources.items():
        if len(srcs) != 1 or None in srcs:
            continue
        layer = next(iter(srcs))
        n = pair_calls[(layer, bn)]
        if n == layer_calls[layer] == bn_calls[bn] and layer not in used:
            pairs[bn] = layer
            used.add(layer)
    return pairs, set(layer_calls)


def find_conv_bn_pairs(model: nn.Module,
                       inputs: torch.Tensor) -> Dict[str, str]:
    """BatchNorm layers that read nothing but one conv/linear's output.

    Args:
        model (nn.Module): The network, in eval mode.
        inputs (Tensor): A probe input.

    Returns:
        dict[str, str]: ``{batchnorm name: conv/linear name}`` (see
        :func:`trace_layers`).
    """
    return trace_layers(model, inputs)[0]


def _bn_affine(bn: Optional[nn.Module], channels: int):
    """Per-channel ``(k, shift)`` with ``BN(y) = y * k + shift``."""
    if bn is None:
        return torch.ones(channels), torch.zeros(channels)
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f'{type(bn).__name__} without running statistics cannot be '
            'folded')
    std = torch.sqrt(bn.running_var.detach().float() + bn.eps)
    gamma = bn.weight.detach().float() if bn.affine else torch.ones_like(std)
    beta = bn.bias.detach().float() if bn.affine else torch.zeros_like(std)
    k = gamma / std
    return k, beta - bn.running_mean.detach().float() * k


def weight_qparams(quantizer: WeightQuantizer, weight: torch.Tensor):
    """Scale and zero point the weight quantizer uses, per output channel.

    Args:
        quantizer (WeightQuantizer): A trained weight quantizer.
        weight (Tensor): The weight it serves.

    Returns:
        tuple[Tensor, Tensor]: ``scale`` and ``zero_point``, shape
        ``(out_channels,)``.
    """
    scale, zero_point = quantizer.qparams(weight)
    channels = weight.shape[0]
    return (scale.float().expand(channels).clone()
            if scale.numel() == 1 else scale.float().flatten(),
            zero_point.float().expand(channels).clone()
            if zero_point.numel() == 1 else zero_point.float().flatten())


def integer_weight(layer: nn.Module, name: str = ''):
    """The trained integer grid of a quantized layer's weight.

    Args:
        layer (QuantConv2d | QuantLinear): The layer.
        name (str): Its name, for error messages.

    Returns:
        tuple: ``(q, scale, zero_point, grid)`` with ``q`` the integer
        levels (float tensor shaped like the weight), per-channel
        ``scale``/``zero_point`` and ``grid = (qmin, qmax)``. They satisfy
        ``(q - zero_point) * scale == weight_quantizer(weight)``.
    """
    wq = layer.weight_quantizer
    weight = layer.weight.detach().float()
    with torch.no_grad():
        reference = wq(weight).detach()
    scale, zero_point = weight_qparams(wq, weight)
    shape = (-1, ) + (1, ) * (weight.dim() - 1)
    s, z = scale.reshape(shape), zero_point.reshape(shape)
    q = torch.round(reference / s) + z
    grid = quant_range(wq.bits, wq.symmetric)
    err = ((q - z) * s - reference).abs()
    if q.min() < grid[0] or q.max() > grid[1] or \
            bool((err > 1e-3 * s).any()):
        raise RuntimeError(
            f'Layer "{name}": the weight quantizer\'s output is not on the '
            f'integer grid the exporter derived (max error '
            f'{err.max().item():.3g}); its quantizer settings '
            f'({wq.extra_repr()}) are not supported by the exporter.')
    return q, scale, zero_point, grid


def fold_integer_weight(q, scale, zero_point, grid, k):
    """Fold a per-channel factor ``k`` into an integer weight, as int8.

    The grid is first centred into the int8 range (an asymmetric
    ``[0, 2**b - 1]`` grid is shifted by ``2**(b-1)``), so any grid of at
    most 8 bits is stored as int8. Channels with ``k < 0`` are mirrored on
    the grid so that every scale stays positive.

    Args:
        q (Tensor): Integer levels (float tensor), output channels first.
        scale (Tensor): Per-channel scale.
        zero_point (Tensor): Per-channel zero point.
        grid (tuple[int, int]): ``(qmin, qmax)`` of the levels.
        k (Tensor): Per-channel factor (BatchNorm's ``gamma / sigma``).

    Returns:
        tuple[Tensor, Tensor, Tensor]: int8 ``qweight``, float ``scale``
        and int8 ``zero_point`` (per output channel).
    """
    qmin, qmax = grid
    offset = (qmin + qmax + 1) // 2
    shape = (-1, ) + (1, ) * (q.dim() - 1)
    q = q - offset
    zero_point = zero_point - offset
    low, high = qmin - offset, qmax - offset
    negative = k < 0
    q = torch.where(negative.reshape(shape), (low + high) - q, q)
    zero_point = torch.where(negative, (low + high) - zero_point, zero_point)
    if zero_point.min() < -128 or zero_point.max() > 127:
        raise ValueError(
            'a weight zero point lies outside int8 '
            f'[{zero_point.min().item()}, {zero_point.max().item()}]; '
            'this weight grid cannot be exported as int8')
    # A channel that BatchNorm zeroes out (k == 0) stores the zero level
    # everywhere and keeps its scale (a zero scale is not a valid step).
    dead = k == 0
    q = torch.where(dead.reshape(shape), zero_point.reshape(shape), q)
    new_scale = torch.where(dead, scale, scale * k.abs())
    return (q.round().to(torch.int8), new_scale,
            zero_point.round().to(torch.int8))


def activation_qparams(quantizer: ActivationQuantizer,
                       name: str = '') -> Optional[nn.Module]:
    """The :class:`QDQActivation` of a trained activation quantizer.

    Args:
        quantizer (ActivationQuantizer | CallSiteQuantizer): The quantizer.
        name (str): Its layer's name, for error messages.

    Returns:
        QDQActivation | QDQCallSites | None: None for a pass-through
        (16-bit) quantizer; one QDQ per call for a per-call-site quantizer.
    """
    if isinstance(quantizer, CallSiteQuantizer):
        sites = [activation_qparams(s, f'{name}@call {k}')
                 for k, s in enumerate(quantizer.sites)]
        return None if sites[0] is None else QDQCallSites(sites)
    if not quantizer.enabled:
        return None
    if not quantizer.calibrated:
        raise ValueError(
            f'The activation quantizer of layer "{name}" was never '
            'calibrated: the model is not a trained quantized model '
            '(run calibration / training before exporting).')
    scale, zero_point = quantizer.qparams()
    return QDQActivation(
        float(scale), int(zero_point.round().item()),
        quant_range(quantizer.bits, quantizer.symmetric))


def _convert_layer(layer: nn.Module, bn: Optional[nn.Module], name: str,
                   quantize: bool) -> nn.Module:
    is_conv = isinstance(layer, nn.Conv2d)
    k, shift = _bn_affine(bn, layer.weight.shape[0])
    bias = layer.bias.detach().float() if layer.bias is not None \
        else torch.zeros_like(k)
    new_bias = bias * k + shift if bn is not None else layer.bias
    act = qweight = scale = zero_point = None
    weight = layer.weight.detach().float()
    if quantize and isinstance(layer, (QuantConv2d, QuantLinear)):
        act = activation_qparams(layer.act_quantizer, name)
        if layer.weight_quantizer.enabled:
            q, scale, zero_point, grid = integer_weight(layer, name)
            qweight, scale, zero_point = fold_integer_weight(
                q, scale, zero_point, grid, k)
    if qweight is None:
        weight = weight * k.reshape((-1, ) + (1, ) * (weight.dim() - 1))
    if is_conv:
        return QDQConv2d(layer, weight, new_bias, qweight, scale, zero_point,
                         act)
    return QDQLinear(weight, new_bias, qweight, scale, zero_point, act)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition('.')
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def build_export_network(network: nn.Module,
                         inputs: torch.Tensor,
                         quantize: bool = True
                         ) -> Tuple[nn.Module, Dict[str, str]]:
    """A copy of ``network`` with QDQ layers and BatchNorm folded.

    Every ``nn.Conv2d`` / ``nn.Linear`` (quantized or not) that the
    forward runs becomes a :class:`QDQConv2d` / :class:`QDQLinear`; each
    BatchNorm that reads nothing but one such layer's output is folded into
    it and replaced by ``nn.Identity``. ``network`` itself is not
    modified.

    Args:
        network (nn.Module): Network whose ``forward(inputs)`` is exported.
        inputs (Tensor): A probe input (finds conv -> BatchNorm pairs).
        quantize (bool): Export the trained quantization (QDQ) if True;
            a plain float network (BatchNorm folded) otherwise.

    Returns:
        tuple[nn.Module, dict]: The export network (eval mode) and the
        folded ``{batchnorm: layer}`` pairs.
    """
    network = copy.deepcopy(network).eval()

    def check_calibrated(name, layer):
        # refuse an uncalibrated range before the layer runs on it
        if quantize and isinstance(layer, (QuantConv2d, QuantLinear)):
            activation_qparams(layer.act_quantizer, name)

    pairs, executed = trace_layers(network, inputs, check_calibrated)
    bn_of = {layer: bn for bn, layer in pairs.items()}
    # layers the forward never reaches (e.g. a two-stage detector's RoI
    # head) are not part of the graph and stay as they are
    layers = [(n, m) for n, m in network.named_modules()
              if _exact_layer(m) and n in executed]
    for name, layer in layers:
        bn = network.get_submodule(bn_of[name]) if name in bn_of else None
        _set_module(network, name, _convert_layer(layer, bn, name, quantize))
    for bn in pairs:
        _set_module(network, bn, nn.Identity())
    return network.eval(), pairs
