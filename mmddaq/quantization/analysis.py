"""Where a quantized model's error comes from: per layer and per call."""
import contextlib
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from .fake_quant import PASS_THROUGH_BITS
from .model_quantizer import (activation_quantizers, observation_disabled,
                              quantized_layers)
from .quantizers import ActivationQuantizer, CallSiteQuantizer


@torch.no_grad()
def activation_error_by_call(q_model: nn.Module,
                             forward: Callable[[nn.Module, torch.Tensor],
                                               object],
                             batches: Sequence[torch.Tensor]) -> List[dict]:
    """Input-quantization error of every quantized layer, call by call.

    A layer that runs several times per forward (a RetinaNet head conv,
    once per FPN level) gets one row per call, whether it has one range per
    call or a shared one, so both can be compared level by level.

    Args:
        q_model (nn.Module): A quantized model with frozen ranges.
        forward (Callable): ``forward(model, x)`` runs it on a batch.
        batches (Sequence[Tensor]): Inputs to measure on.

    Returns:
        list[dict]: Per (layer, call): ``layer``, ``call``, ``a_bits``,
        ``rel_error`` (``||Q(x) - x||^2 / ||x||^2`` summed over batches),
        ``input_absmax`` and ``step`` (the grid step used).
    """
    stats: Dict[Tuple[str, int], List[float]] = {}
    counters: Dict[str, int] = {}
    handles = []

    def hook(name, fixed_call=None):

        def record(module, args, output):
            x = args[0]
            if fixed_call is None:
                call = counters.get(name, 0)
                counters[name] = call + 1
            else:
                call = fixed_call
            s = stats.setdefault((name, call), [0., 0., 0., 0.])
            s[0] += float((output.float() - x.float()).pow(2).sum())
            s[1] += float(x.float().pow(2).sum())
            s[2] = max(s[2], float(x.abs().max()))
            s[3] = float(module.qparams()[0])

        return record

    for name, layer in quantized_layers(q_model):
        aq = layer.act_quantizer
        if not aq.enabled:
            continue
        if isinstance(aq, CallSiteQuantizer):
            for k, site in enumerate(aq.sites):
                handles.append(site.register_forward_hook(hook(name, k)))
        elif isinstance(aq, ActivationQuantizer):
            handles.append(aq.register_forward_hook(hook(name)))
    try:
        with observation_disabled(q_model):
            for x in batches:
                counters.clear()
                forward(q_model, x)
    finally:
        for h in handles:
            h.remove()
    bits = {n: m.a_bits for n, m in quantized_layers(q_model)}
    return [
        dict(layer=name, call=call, a_bits=bits[name],
             rel_error=s[0] / max(s[1], 1e-12), input_absmax=s[2], step=s[3])
        for (name, call), s in stats.items()
    ]



@contextlib.contextmanager
def activations_in_float(q_model: nn.Module, layers: Iterable[str]):
    """Within the ``with`` block, the named quantized layers take their
    inputs unquantized (every call site of a shared layer); everything else
    stays as it is.

    Args:
        q_model (nn.Module): A quantized model.
        layers (Iterable[str]): Names of its quantized layers.
    """
    wanted = set(layers)
    found = {n: m for n, m in quantized_layers(q_model) if n in wanted}
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f'not quantized layers of the model: {missing}')
    saved = [(q, q.bits) for m in found.values()
             for q in activation_quantizers(m)]
    try:
        for q, _ in saved:
            q.bits = PASS_THROUGH_BITS
        yield
    finally:
        for q, bits in saved:
            q.bits = bits


def layer_groups(q_model: nn.Module, depth: int = 2,
                 each: Sequence[str] = ()) -> Dict[str, List[str]]:
    """The quantized layers whose activations are quantized, grouped by the
    first ``depth`` parts of their names (``backbone.layer2``,
    ``neck.lateral_convs``); layers under a prefix in ``each`` get a group
    of their own.

    Returns:
        dict[str, list[str]]: Group name -> layer names, in model order.
    """
    groups: Dict[str, List[str]] = {}
    for name, layer in quantized_layers(q_model):
        if not any(q.enabled for q in activation_quantizers(layer)):
            continue
        if any(name == p or name.startswith(p + '.') for p in each):
            key = name
        else:
            key = '.'.join(name.split('.')[:depth])
        groups.setdefault(key, []).append(name)
    return groups


def activation_gaps(q_model: nn.Module, groups: Dict[str, List[str]],
                    evaluate: Callable[[], float]) -> List[dict]:
    """What each group's activation quantization costs the metric.

    ``evaluate()`` is run with everything quantized, with all activations
    in float (weights still quantized), and with each group's inputs in
    float in turn.

    Args:
        q_model (nn.Module): The quantized model ``evaluate`` measures.
        groups (dict[str, list[str]]): Group name -> quantized layer names
            (see :func:`layer_groups`).
        evaluate (Callable[[], float]): The metric of the model as it is
            now (higher is better).

    Returns:
        list[dict]: ``group``, ``layers``, ``value`` and ``gain`` (value
        minus the all-quantized value) per row; the first rows are
        ``'(all quantized)'`` and ``'(all activations in float)'``.
    """
    base = float(evaluate())
    every = [n for names in groups.values() for n in names]
    rows = [dict(group='(all quantized)', layers=[], value=base, gain=0.)]
    for group, names in [('(all activations in float)', every)] + \
            list(groups.items()):
        with activations_in_float(q_model, names):
            value = float(evaluate())
        rows.append(dict(group=group, layers=list(names), value=value,
                         gain=value - base))
    return rows


__all__ = ['activation_error_by_call', 'activation_gaps',
           'activations_in_float', 'layer_groups']
