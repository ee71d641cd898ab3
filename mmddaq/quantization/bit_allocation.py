"""Mixed-precision weight bit-widths allocated from layer importance.

The allocation problem: each quantizable layer ``l`` has ``n_l`` weights
and a cost ``c_l(b)`` of quantizing them to ``b`` bits (the expected loss
increase, e.g. mean Hessian trace x ``||Q_b(W) - W||^2``). Choose one
bit-width per layer from a set of candidates so that the total cost is as
small as possible while the average number of bits per weight,
``sum_l n_l b_l / sum_l n_l``, stays within a budget.

:class:`GreedyBitAllocator` solves it by marginal gain: every layer starts
at the smallest candidate and the upgrade with the largest cost reduction
per extra bit of model size is applied, as long as it fits, until none
does. Sizes are counted in whole bits, so the budget is met exactly or from
below, and ties are broken by layer order, so the result is deterministic.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import nn

from mmddaq.registry import MODELS
from .fake_quant import PASS_THROUGH_BITS, check_bits
from .model_quantizer import quantized_layers
from .quantizers import WeightQuantizer

#: Bit-widths tried by default.
DEFAULT_CANDIDATES = (2, 3, 4, 5, 6, 8)
#: Bits a weight left in floating point occupies in a model-size count.
FLOAT_BITS = 32


@dataclass(frozen=True)
class LayerCost:
    """One layer to allocate: its size and the cost of each bit-width.

    Args:
        name (str): Layer name.
        numel (int): Number of weights.
        costs (dict[int, float]): Cost (expected loss increase) of
            quantizing the layer's weight to each candidate bit-width.
    """

    name: str
    numel: int
    costs: Dict[int, float] = field(default_factory=dict)


def costs_from_sensitivity(sensitivity: float,
                           numel: int,
                           candidates: Sequence[int] = DEFAULT_CANDIDATES,
                           ref_bits: int = 4,
                           decay: float = 4.0) -> Dict[int, float]:
    """Cost of each bit-width from a per-weight sensitivity.

    Uniform quantization error shrinks about ``decay`` = 4x (its step
    halves) for every extra bit, so the cost of ``b`` bits is
    ``numel * sensitivity * decay ** (ref_bits - b)``.

    Args:
        sensitivity (float): Importance per weight at ``ref_bits``.
        numel (int): Number of weights of the layer.
        candidates (Sequence[int]): Bit-widths to price.
        ref_bits (int): Bit-width ``sensitivity`` was measured at.
        decay (float): Error ratio between ``b`` and ``b + 1`` bits.

    Returns:
        dict[int, float]: Bit-width -> cost.
    """
    return {
        int(b): float(numel) * float(sensitivity) * decay**(ref_bits - b)
        for b in candidates
    }


@torch.no_grad()
def weight_quant_error(weight: torch.Tensor, bits: int,
                       quantizer_cfg: Optional[dict] = None) -> float:
    """``||Q_b(W) - W||^2`` of a weight under a min-max weight quantizer.

    Args:
        weight (Tensor): The float weight.
        bits (int): Bit-width.
        quantizer_cfg (dict, optional): Options of :class:`WeightQuantizer`
            (``symmetric``, ``per_channel``; a learnable step is measured at
            its min-max initial value).

    Returns:
        float: The summed squared error.
    """
    cfg = {k: v for k, v in (quantizer_cfg or {}).items()
           if k not in ('type', 'bits', 'learnable')}
    quantizer = WeightQuantizer(bits=bits, **cfg)
    w = weight.detach().float()
    return float((quantizer(w) - w).pow(2).sum())


def average_bits(bits: Mapping[str, int], numels: Mapping[str, int]) -> float:
    """Average bits per weight of ``bits`` (layer -> bits) over ``numels``.

    Raises:
        ValueError: If ``bits`` names a layer ``numels`` does not have or
            there is no weight to average over.
    """
    unknown = sorted(set(bits) - set(numels))
    if unknown:
        raise ValueError(f'no weight count for layers {unknown[:5]}')
    total = sum(numels[n] for n in bits)
    if total <= 0:
        raise ValueError('no weights to average over')
    return sum(numels[n] * b for n, b in bits.items()) / total


def weight_size_bits(model: nn.Module) -> Dict[str, int]:
    """Storage of a quantized model's conv/linear weights, in bits.

    Quantized layers count ``numel x weight bits``; pass-through (16) and
    skipped layers are counted as 32-bit floats.

    Args:
        model (nn.Module): A model after :meth:`ModelQuantizer.quantize`.

    Returns:
        dict[str, int]: ``quantized_bits`` and ``quantized_weights`` (the
        layers whose weight is quantized), ``float_bits`` and
        ``float_weights`` (conv/linear weights left in floating point) and
        ``total_bits``.
    """
    q_bits = q_weights = f_weights = 0
    wrapped = set()
    for name, m in quantized_layers(model):
        wrapped.add(name)
        bits = m.weight_quantizer.bits
        if bits == PASS_THROUGH_BITS:
            f_weights += m.weight.numel()
        else:
            q_bits += m.weight.numel() * bits
            q_weights += m.weight.numel()
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in wrapped \
                and not any(name.startswith(w + '.') for w in wrapped):
            f_weights += m.weight.numel()
    return dict(
        quantized_bits=q_bits,
        quantized_weights=q_weights,
        float_bits=f_weights * FLOAT_BITS,
        float_weights=f_weights,
        total_bits=q_bits + f_weights * FLOAT_BITS)


def pinned_layers(quantizer_cfg: dict, model: nn.Module) -> Dict[str, int]:
    """Layers whose weight bits a rule of the quantizer policy fixes.

    ``first_last_bits`` and ``overrides`` with ``w_bits`` pin layers to
    their bits (e.g. the first and last layer at 8 bits); an allocation
    leaves them alone. Existing ``layer_bits`` are ignored: they are what an
    allocation replaces. Skipped layers are in neither result.

    Args:
        quantizer_cfg (dict): Config of the :class:`ModelQuantizer`.
        model (nn.Module): The float model.

    Returns:
        dict[str, int]: Pinned layer -> weight bits.
    """
    cfg = {k: v for k, v in quantizer_cfg.items()
           if k not in ('type', 'layer_bits')}
    plans = []
    for default in (2, 3):  # a layer that follows the default changes
        plans.append(MODELS.build(
            dict(cfg, type='mmddaq.ModelQuantizer', w_bits=default,
                 a_bits=default)).plan(model))
    return {n: plans[0][n][0] for n in plans[0]
            if plans[0][n][0] == plans[1][n][0]}


def _check_candidates(candidates: Iterable[int]) -> List[int]:
    values = sorted({check_bits(int(b), 'candidate bit-width')
                     for b in candidates})
    if not values:
        raise ValueError('candidate bit-widths must not be empty')
    if PASS_THROUGH_BITS in values:
        raise ValueError(f'candidate bit-widths must be 2-8 bits, got '
                         f'{PASS_THROUGH_BITS} (pass-through) in {values}')
    return values


@MODELS.register_module()
class GreedyBitAllocator:
    """Allocate weight bit-widths under an average-bits budget.

    Every layer starts at the smallest candidate. Then, repeatedly, among
    all upgrades of one layer to a larger candidate that still fit the
    budget, the one with the largest cost reduction per extra bit of model
    size is applied (ties: earlier layer first, then the smaller step). It
    stops when no upgrade fits or none reduces the cost. With costs that
    shrink ~4x per bit this gives more bits to layers whose importance per
    weight is higher, and equal bits when importance is equal.

    Args:
        candidates (Sequence[int]): Allowed weight bit-widths (2-8).
            Defaults to ``(2, 3, 4, 5, 6, 8)``.
        avg_bits (float): Budget: average bits per weight over the
            allocated layers. Defaults to 4.0.
    """

    #: relative tolerance under which two gains per bit count as equal
    TIE_RTOL = 1e-9

    def __init__(self,
                 candidates: Sequence[int] = DEFAULT_CANDIDATES,
                 avg_bits: float = 4.0) -> None:
        self.candidates = _check_candidates(candidates)
        if isinstance(avg_bits, bool) or \
                not isinstance(avg_bits, (int, float)) or \
                not math.isfinite(avg_bits) or avg_bits <= 0:
            raise ValueError(f'avg_bits must be a positive number of bits per '
                             f'weight, got {avg_bits!r}')
        self.avg_bits = float(avg_bits)
        if self.avg_bits < self.candidates[0]:
            raise ValueError(
                f'Bit budget {self.avg_bits:g} bits/weight cannot be met: it '
                f'is below the smallest candidate bit-width '
                f'{self.candidates[0]} (candidates {self.candidates}). Raise '
                f'the budget or allow fewer bits.')

    def _check_layers(self, layers: Sequence[LayerCost]) -> None:
        if not layers:
            raise ValueError('no layers to allocate bits to')
        names = [layer.name for layer in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f'layers are listed twice: {dup[:5]}')
        for layer in layers:
            if isinstance(layer.numel, bool) or \
                    not isinstance(layer.numel, int) or layer.numel <= 0:
                raise ValueError(f'layer "{layer.name}" has numel '
                                 f'{layer.numel!r}; expected a positive int')
            missing = [b for b in self.candidates if b not in layer.costs]
            if missing:
                raise ValueError(f'layer "{layer.name}" has no cost for '
                                 f'bit-widths {missing}')
            bad = [b for b in self.candidates
                   if not math.isfinite(float(layer.costs[b]))]
            if bad:
                raise ValueError(f'layer "{layer.name}" has non-finite '
                                 f'costs at bit-widths {bad}')

    def budget_bits(self, layers: Sequence[LayerCost]) -> int:
        """Total weight bits the budget allows for ``layers``."""
        total = sum(layer.numel for layer in layers)
        return int(math.floor(self.avg_bits * total + 1e-6))

    def allocate(self, layers: Sequence[LayerCost]) -> Dict[str, int]:
        """Choose a bit-width per layer.

        Args:
            layers (Sequence[LayerCost]): The layers, in model order.

        Returns:
            dict[str, int]: Layer name -> weight bits, in input order.
        """
        layers = list(layers)
        self._check_layers(layers)
        budget = self.budget_bits(layers)
        bits = [self.candidates[0]] * len(layers)
        used = sum(layer.numel * b for layer, b in zip(layers, bits))
        while True:
            best = None  # (gain per bit, index, new bits, extra bits)
            for i, layer in enumerate(layers):
                now = float(layer.costs[bits[i]])
                for b in self.candidates:
                    if b <= bits[i]:
                        continue
                    extra = layer.numel * (b - bits[i])
                    if used + extra > budget:
                        break
                    gain = now - float(layer.costs[b])
                    if gain <= 0:
                        continue
                    ratio = gain / extra
                    if best is None or ratio > best[0] * (1 + self.TIE_RTOL):
                        best = (ratio, i, b, extra)
            if best is None:
                break
            _, i, b, extra = best
            bits[i] = b
            used += extra
        return {layer.name: b for layer, b in zip(layers, bits)}


__all__ = [
    'DEFAULT_CANDIDATES', 'LayerCost', 'GreedyBitAllocator',
    'costs_from_sensitivity', 'weight_quant_error', 'average_bits',
    'weight_size_bits', 'pinned_layers'
]
