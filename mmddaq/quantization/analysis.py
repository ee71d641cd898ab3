"""Where a quantized model's error comes from: per layer and per call."""
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from .model_quantizer import observation_disabled, quantized_layers
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


__all__ = ['activation_error_by_call']
