"""What every layer-importance strategy shares."""
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmddaq.quantization import quantized_layers
from mmddaq.utils.recorder import run_with_hooks


def normalize_mean_one(scores: Dict[str, float]) -> Dict[str, float]:
    """Scale non-negative scores so that their mean is 1.

    All-zero (or non-finite) scores become uniform weights.
    """
    values = torch.tensor(list(scores.values()), dtype=torch.float64)
    values = torch.nan_to_num(values.abs(), nan=0., posinf=0.)
    mean = values.mean()
    if not torch.isfinite(mean) or mean <= 0:
        return {k: 1.0 for k in scores}
    return {k: float(v / mean) for k, v in zip(scores, values)}


def limit_span(weights: Dict[str, float],
               max_span: Optional[float]) -> Dict[str, float]:
    """Clamp weights to a band ``max_span`` wide (largest / smallest) around
    their geometric mean, then rescale them to mean 1.

    A raw importance can span thousands (a few layers would then carry all
    of D1 or D2); ``None`` keeps the weights as they are (mean 1).
    """
    if not weights:
        return {}
    if max_span is None:
        return normalize_mean_one(weights)
    if max_span < 1:
        raise ValueError(f'max_span must be >= 1, got {max_span}')
    values = torch.tensor(list(weights.values()), dtype=torch.float64)
    values = torch.nan_to_num(values.abs(), nan=0., posinf=0.)
    positive = values[values > 0]
    if positive.numel() == 0:
        return {k: 1.0 for k in weights}
    center = positive.log().mean().exp()
    half = float(max_span)**0.5
    values = values.clamp(center / half, center * half)
    return normalize_mean_one(dict(zip(weights, values.tolist())))


class BaseImportance:
    """Rank the quantized layers of a model by how much they matter.

    Subclasses implement :meth:`score`; :meth:`__call__` normalises the
    scores to mean 1 over layers.
    """

    def score(self, fp_model: nn.Module, quantized_model: nn.Module,
              sample_fn: Callable[[int], torch.Tensor],
              adapter) -> Dict[str, float]:
        """Raw non-negative score of every quantized layer.

        Args:
            fp_model (nn.Module): The frozen full-precision model.
            quantized_model (nn.Module): Its fake-quantized copy; layer
                names are the same in both.
            sample_fn (Callable[[int], Tensor]): Returns a batch of inputs
                in the model's normalised input space.
            adapter: The task adapter (how to run the model and compare
                outputs).

        Returns:
            dict[str, float]: Layer name -> score.
        """
        raise NotImplementedError

    def __call__(self, fp_model, quantized_model, sample_fn,
                 adapter) -> Dict[str, float]:
        return normalize_mean_one(
            self.score(fp_model, quantized_model, sample_fn, adapter))


def layer_of_each_bn(model: nn.Module, run: Callable[[], object],
                     layer_names: Sequence[str]) -> Dict[str, str]:
    """Map each BatchNorm layer to the conv/linear executed just before it.

    One forward pass (``run``) records the execution order of ``model``'s
    BN layers and of ``layer_names``; a BN inherits the layer that ran
    last before it (the conv whose output it normalises).

    Args:
        model (nn.Module): The model whose modules are traced.
        run (Callable): Runs one forward pass of ``model``.
        layer_names (Sequence[str]): Names of the candidate layers.

    Returns:
        dict[str, str]: BN name -> layer name (BNs before any layer are
        left out).
    """
    wanted = set(layer_names)
    order: List[tuple] = []
    handles = []
    for name, m in model.named_modules():
        if name in wanted:
            kind = 'layer'
        elif isinstance(m, _BatchNorm):
            kind = 'bn'
        else:
            continue
        handles.append(
            m.register_forward_pre_hook(
                lambda mod, inp, name=name, kind=kind: order.append(
                    (kind, name))))
    run_with_hooks(handles, run)
    mapping, last = {}, None
    for kind, name in order:
        if kind == 'layer':
            last = name
        elif last is not None and name not in mapping:
            mapping[name] = last
    return mapping


def tap_weights(importance: Dict[str, float],
                taps: Sequence[str],
                max_span: Optional[float] = None) -> Dict[str, float]:
    """Weight of each tap: mean importance of the layers inside it.

    A tap ``backbone.layer2`` covers ``backbone.layer2`` itself and every
    layer below it. The weights are normalised to mean 1 over taps, within
    ``max_span`` of each other (see :func:`limit_span`).
    """
    scores = {}
    for tap in taps:
        inside = [
            v for k, v in importance.items()
            if k == tap or k.startswith(tap + '.')
        ]
        scores[tap] = sum(inside) / len(inside) if inside else 1.0
    return limit_span(scores, max_span)


def quantized_layer_names(model: nn.Module) -> List[str]:
    """Names of the quantized layers of ``model``."""
    return [n for n, _ in quantized_layers(model)]
