"""Post-training refinement on a pool of samples: bias correction and
block-wise output reconstruction (BRECQ-style, with AdaRound learned
rounding, LSQ activation steps and QDrop).

Both work by module swap on the fake-quantized model (no tracing), so they
apply to every model mmddaq quantizes. Inputs and targets of one block at a
time are captured with forward hooks while the whole models run on the
pool, so memory holds one block's data, not the whole network's.
"""
import contextlib
import hashlib
import inspect
import io
import math
import os
import os.path as osp
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from torch import nn
from torch.nn import functional as F

from mmddaq.registry import MODELS
from mmddaq.utils.atomic_io import atomic_write_bytes
from mmddaq.utils.nested import flatten_tensors
from mmddaq.utils.recorder import run_with_hooks
from .adaround import AdaRoundQuantizer, TemperatureDecay
from .model_quantizer import (activation_quantizers, observation_disabled,
                              quantized_layers)
from .modules import QUANT_MODULES
from .quantizers import CallSites

#: Modules reconstructed as one unit (class names, any package): residual
#: blocks, and mmcv's conv + norm + activation, whose output the next layer
#: sees (a detection head conv's error counts after its ReLU).
DEFAULT_BLOCK_TYPES = ('BasicBlock', 'Bottleneck', 'InvertedResidual',
                       'ConvModule')

Forward = Callable[[nn.Module, torch.Tensor], object]


class Chain(nn.Module):
    """Runs the members of a module list one after another, as a model's
    forward does with a detection head's conv tower (``for conv in
    self.cls_convs: x = conv(x)``), so the tower can be reconstructed as
    one unit. Built around the model's own list; the model is unchanged.

    Args:
        layers (nn.ModuleList): The members, in the order they run.
    """

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _ends(unit: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """(the module a unit's input enters, the module its output leaves):
    the first and last member of a chain, else the unit itself twice."""
    if isinstance(unit, (nn.ModuleList, Chain)):
        layers = unit.layers if isinstance(unit, Chain) else unit
        return layers[0], layers[-1]
    return unit, unit


def _runnable(unit: nn.Module) -> nn.Module:
    return Chain(unit) if isinstance(unit, nn.ModuleList) else unit


def execution_order(model: nn.Module, run: Callable[[], object],
                    names: Sequence[str]) -> List[str]:
    """``names`` sorted by when each submodule first runs in ``run()`` (a
    module list: its first member).

    Submodules that never run are left out.
    """
    modules = dict(model.named_modules())
    order: List[str] = []
    handles = [
        _ends(modules[n])[0].register_forward_pre_hook(
            lambda mod, inp, n=n: order.append(n) if n not in order else None)
        for n in names
    ]
    run_with_hooks(handles, run)
    return order


def reconstruction_units(model: nn.Module,
                         block_types: Sequence[str] = DEFAULT_BLOCK_TYPES,
                         chains: Sequence[str] = ()) -> List[str]:
    """Names of the units reconstructed one at a time, in module order.

    A unit is a module list named in ``chains`` (members run one after
    another on one input, like a detection head's conv tower), a residual
    block (a module whose class name is in ``block_types``) holding
    quantized layers, or a quantized layer that is in neither (stem,
    classifier, FPN and head convs).

    Raises:
        ValueError: A name in ``chains`` is not a non-empty module list of
            ``model`` holding quantized layers.
    """
    modules = dict(model.named_modules())
    for name in chains:
        chain = modules.get(name)
        if not isinstance(chain, nn.ModuleList) or not len(chain) or \
                not quantized_layers(chain):
            raise ValueError(
                f'chains: {name!r} is not a module list of quantized layers '
                'in this model (a head\'s conv tower, e.g. '
                '\'bbox_head.cls_convs\')')
    units: List[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(u + '.') for u in units):
            continue
        if name in chains:
            units.append(name)
        elif type(module).__name__ in block_types and \
                quantized_layers(module):
            units.append(name)
        elif isinstance(module, QUANT_MODULES):
            units.append(name)
    inside = [c for c in chains if c not in units]
    if inside:
        raise ValueError(f'chains: {inside} lie inside other units (blocks '
                         f'of {list(block_types)}); name the block instead')
    return units


def _run_both(fp_model, q_model, forward: Forward, batches, handles,
              before_batch: Optional[Callable[[], None]] = None) -> None:
    """Run both models on every batch (no autograd, ranges untouched), then
    remove the hooks ``handles``.

    A ``forward`` that takes ``reference`` (a task adapter's) gets the FP
    outputs for the quantized pass, so both models see the same proposals
    in a two-stage detector's RoI head. ``before_batch`` is called before
    each batch.
    """
    takes_reference = 'reference' in inspect.signature(forward).parameters
    try:
        with torch.no_grad(), observation_disabled(q_model):
            for x in batches:
                if before_batch is not None:
                    before_batch()
                reference = forward(fp_model, x)
                if takes_reference:
                    forward(q_model, x, reference=reference)
                else:
                    forward(q_model, x)
    finally:
        for h in handles:
            h.remove()


def _call_sites_in(unit: nn.Module) -> List[CallSites]:
    return [m for m in unit.modules() if isinstance(m, CallSites)]


@contextlib.contextmanager
def call_site(unit: nn.Module, site: int, multi=None):
    """Within the block, per-call-site quantizers in ``unit`` (or the given
    ``multi`` list of them) use ``site`` (a unit run on its own inputs,
    outside the model's forward)."""
    multi = _call_sites_in(unit) if multi is None else multi
    for m in multi:
        m.forced_site = site % m.num_sites
    try:
        yield
    finally:
        for m in multi:
            m.forced_site = None


def _run_unit(unit: nn.Module, x: torch.Tensor, site: int, multi):
    if not multi:  # nearly every unit: nothing to pin
        return flatten_tensors(unit(x))
    with call_site(unit, site, multi):
        return flatten_tensors(unit(x))


class _UnitDone(Exception):
    """Stops a forward once the unit being captured has run its last call
    of the forward: nothing after it is needed."""


def _stopping_forward(forward: Forward) -> Forward:
    """``forward`` that ends quietly when a capture hook stops it."""

    def run(model, x):
        try:
            return forward(model, x)
        except _UnitDone:
            return None

    return run


def _capture(fp_model, q_model, fp_unit, q_unit, forward: Forward,
             batches, maps: Optional[Sequence[torch.Tensor]] = None,
             fp_inputs: bool = False,
             unit_maps: Optional[Dict[Tuple[int, int], torch.Tensor]] = None
             ) -> List[tuple]:
    """(quantized-model input, FP output, call index within the forward,
    a position-weight map or None, the FP model's input if ``fp_inputs``
    else None) of every call of a unit.

    The map is the batch's from ``maps`` (input resolution) times this
    call's from ``unit_maps`` (keyed by batch and call index, at the unit's
    output resolution), whichever are given.

    Records are copies: an in-place operation after the unit (mmcv's
    ``ConvModule`` activations are in place) cannot rewrite them. After
    the first batch has shown how often the unit runs per forward, each
    later forward stops at the unit's last call (not for a ``forward``
    that takes ``reference``: its quantized pass needs the FP outputs).
    """
    q_inputs, fp_outputs, sites, batch_of, fp_in = [], [], [], [], []
    calls = [0, 0]  # this forward's quantized-input and FP-output calls
    batch = [-1]
    per_forward = [None]
    # the quantized pass of a forward taking `reference` needs the whole FP
    # pass's outputs: such forwards run to the end
    can_stop = 'reference' not in inspect.signature(forward).parameters

    def grab_input(module, args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if len(tensors) != 1:
            raise ValueError(
                f'{type(module).__name__} takes {len(tensors)} tensor '
                'inputs; block reconstruction handles units with exactly '
                'one (exclude it with block_types or reconstruct its '
                'layers one by one).')
        q_inputs.append(tensors[0].detach().clone())
        sites.append(calls[0])
        batch_of.append(batch[0])
        calls[0] += 1
        if can_stop and calls[0] == per_forward[0]:
            raise _UnitDone

    def grab_fp_input(module, args):
        fp_in.append(next(a for a in args
                          if isinstance(a, torch.Tensor)).detach().clone())

    def grab_output(module, args, output):
        fp_outputs.append([t.detach().clone()
                           for t in flatten_tensors(output)])
        calls[1] += 1
        if can_stop and calls[1] == per_forward[0]:
            raise _UnitDone

    def before_batch():
        if per_forward[0] is None and sites:
            per_forward[0] = calls[0]  # counted on the first batch
        calls[0] = calls[1] = 0
        batch[0] += 1

    run = _stopping_forward(forward) if can_stop else forward
    fp_first, fp_last = _ends(fp_unit)
    handles = [
        _ends(q_unit)[0].register_forward_pre_hook(grab_input),
        fp_last.register_forward_hook(grab_output)
    ]
    if fp_inputs:
        handles.append(fp_first.register_forward_pre_hook(grab_fp_input))
    _run_both(fp_model, q_model, run, batches, handles,
              before_batch=before_batch)
    if len(q_inputs) != len(fp_outputs):
        raise RuntimeError('the FP and the quantized model called a unit a '
                           f'different number of times ({len(fp_outputs)} '
                           f'vs {len(q_inputs)})')
    # a map weights the positions of the images it was made for: units
    # that run on other rows (a RoI head's per-RoI features) get none
    weight_maps = [
        maps[b] if maps is not None and len(x) == len(maps[b]) else None
        for x, b in zip(q_inputs, batch_of)
    ]
    if unit_maps is not None:
        weight_maps = [
            _combine_maps(m, unit_maps.get((b, site)), len(x))
            for m, x, b, site in zip(weight_maps, q_inputs, batch_of, sites)
        ]
    if not fp_inputs:
        fp_in = [None] * len(q_inputs)
    return list(zip(q_inputs, fp_outputs, sites, weight_maps, fp_in))


def _combine_maps(focus: Optional[torch.Tensor],
                  unit_map: Optional[torch.Tensor],
                  rows: int) -> Optional[torch.Tensor]:
    """``focus`` max-pooled to ``unit_map``'s positions times it (either
    alone if the other is missing or not of these ``rows``)."""
    if unit_map is None or len(unit_map) != rows:
        return focus
    if focus is None:
        return unit_map
    return F.adaptive_max_pool2d(focus, unit_map.shape[-2:]) * unit_map


@torch.no_grad()
def sensitivity_maps(fp_model: nn.Module, q_model: nn.Module,
                     forward: Forward, batches, units: Sequence[str],
                     output_loss: Callable, floor: float
                     ) -> Dict[str, Dict[Tuple[int, int], torch.Tensor]]:
    """Where each unit's output matters for the model's output error.

    For every batch of the pool, the quantized model runs with autograd
    and ``output_loss(fp_output, q_output)`` (e.g. the task's distillation
    loss) is differentiated with respect to every call of every unit's
    output; the squared gradient, summed over channels and scaled to mean
    1 per sample, plus ``floor``, is that call's ``(N, 1, H, W)`` map
    (BRECQ's Fisher weights per position). Only units whose output is one
    4-D tensor get maps.

    Returns:
        dict: ``{unit: {(batch, call): map}}``.
    """
    takes_reference = 'reference' in inspect.signature(forward).parameters
    deltas: List[Tuple[str, int, torch.Tensor]] = []
    calls: Dict[str, int] = {}

    def make_hook(name):
        def hook(module, args, output):
            if not (isinstance(output, torch.Tensor) and output.dim() == 4):
                return None
            delta = torch.zeros_like(output, requires_grad=True)
            deltas.append((name, calls.get(name, 0), delta))
            calls[name] = calls.get(name, 0) + 1
            return output + delta  # d(loss)/d(delta) = d(loss)/d(output)

        return hook

    maps: Dict[str, Dict[Tuple[int, int], torch.Tensor]] = {
        n: {} for n in units}
    handles = [
        _ends(q_model.get_submodule(n))[1].register_forward_hook(make_hook(n))
        for n in units
    ]
    try:
        for b, x in enumerate(batches):
            deltas.clear()
            calls.clear()
            reference = forward(fp_model, x)
            with torch.enable_grad(), observation_disabled(q_model):
                out = forward(q_model, x, reference=reference) \
                    if takes_reference else forward(q_model, x)
                loss = output_loss(reference, out)
                if not deltas:
                    continue
                grads = torch.autograd.grad(
                    loss, [d for *_, d in deltas], allow_unused=True)
            for (name, call, delta), g in zip(deltas, grads):
                s = torch.zeros_like(delta[:, :1]) if g is None else \
                    g.pow(2).sum(1, keepdim=True)
                s = s / s.mean((2, 3), keepdim=True).clamp_min(1e-30)
                maps[name][(b, call)] = s + floor
    finally:
        for h in handles:
            h.remove()
    return maps


def site_weights(records) -> Dict[int, float]:
    """Loss weight of each call site of a unit: the mean over sites of the
    FP outputs' mean square divided by the site's own.

    A RetinaNet head conv runs on every FPN level, and the coarse levels'
    outputs are an order of magnitude larger than the fine ones': with
    equal weights their squared error decides the shared weights' rounding
    and the fine levels, where small objects are found, pay for it.
    Weighted, every output element's error counts relative to its own
    level's scale (so each level counts by its number of positions, as in
    a detector's loss over anchors); a unit with one call site gets
    weight 1 (nothing changes).
    """
    energy: Dict[int, List[float]] = {}
    for record in records:
        target, site = record[1], record[2]
        sq = sum(float(t.pow(2).sum()) for t in target)
        n = sum(t.numel() for t in target)
        energy.setdefault(site, []).append(sq / max(n, 1))
    mean = {s: sum(v) / len(v) for s, v in energy.items()}
    if len(mean) < 2:
        return {s: 1. for s in mean}
    overall = sum(mean.values()) / len(mean)
    return {s: (overall / e if e > 0 else 1.) for s, e in mean.items()}


def _output_error(unit: nn.Module, records,
                  weights: Optional[Dict[int, float]] = None,
                  position_mean: bool = False) -> float:
    """Mean over records of the per-sample squared output error (see
    :func:`_rec_loss`), each record's weighted by ``weights[site]`` if
    given."""
    total, count = 0., 0
    multi = _call_sites_in(unit)
    with torch.no_grad():
        for x, target, site, focus, *_ in records:
            out = _run_unit(unit, x, site, multi)
            w = 1. if weights is None else weights[site]
            total += w * float(
                _rec_loss(out, target, position_mean, focus)) * len(x)
            count += len(x)
    return total / max(count, 1)


def focus_weights(focus: torch.Tensor, out: torch.Tensor):
    """``focus`` (``(N, 1, H_in, W_in)``) pooled to the positions of
    ``out`` (``(N, C, H, W)``) by its maximum and scaled to mean 1 per
    sample; None where ``out`` is not such a map of the same samples."""
    if focus is None or out.dim() != 4 or len(out) != len(focus):
        return None
    w = F.adaptive_max_pool2d(focus, out.shape[-2:])
    return w / w.mean((2, 3), keepdim=True).clamp_min(1e-12)


def _rec_loss(out: List[torch.Tensor], target: List[torch.Tensor],
              position_mean: bool = False,
              focus: Optional[torch.Tensor] = None):
    """Squared error summed over features, averaged over samples; with
    ``position_mean`` summed over channels and averaged over samples and
    spatial positions (the scale AdaRound's regulariser weight is usually
    quoted for); with a ``focus`` map each position weighted by it
    (:func:`focus_weights`)."""
    loss = 0.
    for o, t in zip(out, target):
        sq = (o - t).pow(2)
        w = focus_weights(focus, sq)
        if w is not None:
            sq = sq * w
        if position_mean and sq.dim() > 2:
            loss = loss + sq.sum(1).mean()
        else:
            loss = loss + sq.reshape(len(o), -1).sum(1).mean()
    return loss


@torch.no_grad()
def _undecided_share(rounders) -> float:
    """Share of learned rounding offsets still between 0.1 and 0.9 (not
    yet a decision for rounding down or up) before they are made hard."""
    total = sum(a.alpha.numel() for a in rounders)
    if not total:
        return 0.
    soft = sum(int(((o > 0.1) & (o < 0.9)).sum())
               for o in (a.soft_offset() for a in rounders))
    return soft / total


def _unit_biases(unit: nn.Module, layers) -> List[nn.Parameter]:
    """The additive terms a unit's output can be shifted by: its quantized
    layers' biases and its norm layers' shifts (``beta``)."""
    found = {id(m.bias): m.bias for m in layers
             if isinstance(getattr(m, 'bias', None), nn.Parameter)}
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    for m in unit.modules():
        if isinstance(m, norms) and \
                isinstance(getattr(m, 'bias', None), nn.Parameter):
            found.setdefault(id(m.bias), m.bias)
    return list(found.values())


class RecordSampler:
    """Draws the training batch of each reconstruction step from a unit's
    records (:func:`_capture`).

    A step's samples come from one call site (one FPN level of a shared
    head conv: every site has its own input shape), chosen with
    probability proportional to its records. With ``mix`` they are drawn
    without replacement from all records of that site, i.e. from the whole
    pool; otherwise with replacement from one record (one pool batch).

    Args:
        records (list): ``(input, targets, site, focus[, fp_input])``
            records.
        batch_size (int): Samples per step.
        mix (bool): Draw across the pool batches of a site.
    """

    def __init__(self, records, batch_size: int, mix: bool = True) -> None:
        if not records:
            raise ValueError('no records to draw from')
        self.records = records
        self.batch_size = int(batch_size)
        self.mix = mix
        # per (site, input shape): every (record, row) sample it holds
        self.groups: Dict[tuple, List[Tuple[int, int]]] = {}
        for i, (x, _, site, *_) in enumerate(records):
            self.groups.setdefault((site, tuple(x.shape[1:])), []).extend(
                (i, row) for row in range(len(x)))

    def __call__(self):
        """One step's ``(input, targets, site, focus, fp_input)`` (the
        last two None where the records have none)."""
        record = self.records[int(torch.randint(len(self.records), ()))]
        x, target, site, focus = record[:4]
        if not self.mix:
            idx = torch.randint(len(x), (min(self.batch_size, len(x)), ),
                                device=x.device)
            fp_x = _fp_input(record)
            return (x[idx], [t[idx] for t in target], site,
                    None if focus is None else focus[idx],
                    None if fp_x is None else fp_x[idx])
        samples = self.groups[(site, tuple(x.shape[1:]))]
        picked: Dict[int, List[int]] = {}
        for k in torch.randperm(len(samples))[:self.batch_size].tolist():
            i, row = samples[k]
            picked.setdefault(i, []).append(row)
        parts = [(self.records[i], torch.tensor(rows, device=x.device))
                 for i, rows in picked.items()]
        cat = lambda ts: ts[0] if len(ts) == 1 else torch.cat(ts)
        xs = cat([rec[0][r] for rec, r in parts])
        targets = [cat([rec[1][k][r] for rec, r in parts])
                   for k in range(len(target))]
        maps = None if any(rec[3] is None for rec, _ in parts) else cat(
            [rec[3][r] for rec, r in parts])
        fp_xs = None if any(_fp_input(rec) is None for rec, _ in parts) \
            else cat([_fp_input(rec)[r] for rec, r in parts])
        return xs, targets, site, maps, fp_xs


def _fp_input(record) -> Optional[torch.Tensor]:
    return record[4] if len(record) > 4 else None


@MODELS.register_module()
class BlockReconstruction:
    """Reconstruct each block's output from the FP model's, block by block.

    For every unit (residual block, or a layer outside blocks) in execution
    order, its inputs from the quantized model and the FP model's outputs
    are captured on the sample pool; then the unit's weight rounding
    (AdaRound), activation steps (LSQ) are learned to minimise the squared
    output error, with QDrop's random dropping of activation quantization.
    Afterwards the rounding is hard and baked into the weights, and the
    learned steps into the activation ranges: the model keeps its
    structure, saves, loads and exports as before. A unit whose output
    error on the pool ends higher than with nearest rounding is put back
    as it was (``kept=False`` in the results).

    With a ``state_file``, the quantized model's state is saved there after
    every unit; a later call on the same starting model and pool (an
    interrupted run started again, e.g. ``tools/train.py --resume``)
    continues after the last finished unit and ends as the uninterrupted
    run would. A state left by a different model or pool is not used (it
    is kept as ``<state_file>.stale``).

    Args:
        iters (int): Optimisation steps per unit. Defaults to 500.
        batch_size (int): Samples per step. Defaults to 32.
        block_types (Sequence[str]): Class names of residual blocks
            reconstructed as one unit.
        chains (Sequence[str]): Names of module lists whose members run
            one after another and are reconstructed as one unit (a
            detection head's conv towers, ``'bbox_head.cls_convs'``): the
            later convs' rounding can then make up for the earlier ones'
            error. The members must be all the model computes between
            them (mmcv ``ConvModule`` towers are; a list of linear layers
            whose activation the model applies outside it is not).
            Defaults to none (each member is its own unit).
        adaround (bool): Learn the rounding. Defaults to True.
        round_lr (float): Adam learning rate of the rounding variables.
        round_weight (float): Weight of the rounding regulariser.
        warmup (float): Share of steps before the regulariser starts.
        beta (tuple[float, float]): Start and end of its exponent.
        learn_act_steps (bool): Learn activation step sizes (LSQ).
        act_lr (float): Adam learning rate of the activation steps
            (cosine-annealed to 0 over ``iters``).
        bias_lr (float, optional): Also learn the unit's biases and norm
            shifts (``beta``) in float, at this Adam learning rate
            (cosine-annealed), so they absorb the mean shift that 4-bit
            activations leave. Defaults to None (biases stay as they are).
        round_lr_decay (bool): Anneal the rounding variables' learning rate
            too. Defaults to False: AdaRound keeps it constant, and with
            few ``iters`` a decayed rate leaves the variables short of the
            0/1 they must reach (Adam moves each by at most about the
            learning rate per step).
        mix_batches (bool): Draw each step's ``batch_size`` samples without
            replacement from every record of one call site (all pool
            batches). Defaults to True; False draws them with replacement
            from one pool batch.
        drop_prob (float): QDrop: share of activation elements left
            unquantized during reconstruction (0 turns it off).
        fp_input_prob (float): QDrop's input mixing: share of a unit's
            input elements taken from the FP model's input to it instead
            of the quantized model's, drawn anew each step (the FP inputs
            are captured too, which doubles the inputs kept per unit).
            Defaults to 0 (the quantized model's input only).
        balance_sites (bool): Weight each call site of a layer run several
            times per forward (a shared detection head conv, once per FPN
            level) by its output scale (:func:`site_weights`), so every
            level's error counts relative to its own outputs. Units with
            one call site are unaffected. Defaults to False.
        position_mean (bool): Average the squared error over spatial
            positions as well as samples (summed over channels only), which
            makes the rounding regulariser ``round_weight`` count for as
            much on a 64x64 feature map as on a 4x4 one. Defaults to False
            (summed over all features).
        holdout (float): Share of the pool (its last batches) left out of
            the fit; a unit is kept only if its output error on them falls,
            so rounding fitted to the pool's quirks is put back. Defaults
            to 0 (fit and judge on the whole pool).
        focus (float, optional): Detectors: weight each output position
            by ``focus`` + the FP detector's best score there (pooled to the
            unit's resolution, mean 1 per image), so the few positions with
            objects are not drowned by background. ``None`` (default):
            every position counts the same.
        sensitivity (float, optional): Weight each output position of a
            unit by how much the model's output error responds to it (see
            :func:`sensitivity_maps`: squared gradient of the task's
            distillation loss between the FP and the quantized model,
            measured once on the pool before any unit is reconstructed)
            plus this floor; multiplies ``focus`` if both are set. ``None``
            (default): off.
        skip (Sequence[str]): Names of modules whose units are left as
            calibration made them (nearest rounding, steps as calibrated),
            e.g. ``('roi_head',)`` for a two-stage detector's RoI head;
            each must hold at least one unit. Defaults to none.
        log_interval (int): Log every n units (0: only the summary).
    """

    def __init__(self,
                 iters: int = 500,
                 batch_size: int = 32,
                 block_types: Sequence[str] = DEFAULT_BLOCK_TYPES,
                 chains: Sequence[str] = (),
                 adaround: bool = True,
                 round_lr: float = 1e-2,
                 round_weight: float = 0.01,
                 warmup: float = 0.2,
                 beta: Tuple[float, float] = (20., 2.),
                 learn_act_steps: bool = True,
                 act_lr: float = 4e-5,
                 bias_lr: Optional[float] = None,
                 drop_prob: float = 0.5,
                 fp_input_prob: float = 0.,
                 round_lr_decay: bool = False,
                 mix_batches: bool = True,
                 balance_sites: bool = False,
                 position_mean: bool = False,
                 holdout: float = 0.,
                 focus: Optional[float] = None,
                 sensitivity: Optional[float] = None,
                 skip: Sequence[str] = (),
                 log_interval: int = 1) -> None:
        if iters < 1 or batch_size < 1:
            raise ValueError('iters and batch_size must be >= 1')
        if not 0. <= drop_prob < 1.:
            raise ValueError(f'drop_prob must be in [0, 1), got {drop_prob}')
        self.iters = int(iters)
        self.batch_size = int(batch_size)
        self.block_types = tuple(block_types)
        self.chains = tuple(chains)
        self.adaround = adaround
        self.round_lr = round_lr
        self.round_weight = round_weight
        self.warmup = warmup
        self.beta = tuple(beta)
        self.learn_act_steps = learn_act_steps
        self.act_lr = act_lr
        if bias_lr is not None and bias_lr <= 0:
            raise ValueError(f'bias_lr must be > 0 (or None), got {bias_lr}')
        self.bias_lr = bias_lr
        self.drop_prob = drop_prob
        if not 0. <= fp_input_prob <= 1.:
            raise ValueError('fp_input_prob must be in [0, 1], got '
                             f'{fp_input_prob}')
        self.fp_input_prob = float(fp_input_prob)
        self.round_lr_decay = bool(round_lr_decay)
        self.mix_batches = bool(mix_batches)
        self.balance_sites = bool(balance_sites)
        self.position_mean = bool(position_mean)
        if not 0. <= holdout < 1.:
            raise ValueError(f'holdout must be in [0, 1), got {holdout}')
        self.holdout = float(holdout)
        if focus is not None and focus <= 0:
            raise ValueError(f'focus must be > 0 (or None), got {focus}')
        self.focus = None if focus is None else float(focus)
        if sensitivity is not None and sensitivity < 0:
            raise ValueError(
                f'sensitivity must be >= 0 (or None), got {sensitivity}')
        self.sensitivity = None if sensitivity is None else float(sensitivity)
        if isinstance(skip, str):
            skip = (skip, )
        self.skip = tuple(skip)
        self.log_interval = log_interval

    def __call__(self, fp_model: nn.Module, q_model: nn.Module,
                 forward: Forward,
                 batches: Sequence[torch.Tensor],
                 score_map: Optional[Callable] = None,
                 output_loss: Optional[Callable] = None,
                 state_file: Optional[str] = None) -> List[dict]:
        """Reconstruct every unit of ``q_model`` in place.

        Args:
            fp_model (nn.Module): The frozen FP model.
            q_model (nn.Module): Its fake-quantized copy, activation ranges
                calibrated and frozen.
            forward (Callable): ``forward(model, x)`` runs a model on a
                batch (the task adapter's forward).
            batches (Sequence[Tensor]): The sample pool, in batches.
            score_map (Callable, optional): ``score_map(fp_output, x)``
                gives an ``(N, 1, H, W)`` map of where the FP model sees
                objects in ``x`` (a detector adapter's ``score_map``); used
                with ``focus``.
            output_loss (Callable, optional): ``output_loss(fp_output,
                q_output)``, the output error ``sensitivity`` is measured
                with (a task adapter's ``distill_loss``).
            state_file (str, optional): Where to keep the progress (see
                the class docs); the caller removes it once the result is
                saved. ``None`` (default): no resuming.

        Returns:
            list[dict]: Per unit: ``name``, ``error_before`` and
            ``error_after`` (squared output error on the pool), ``kept``,
            ``undecided`` (share of learned rounding offsets still between
            0.1 and 0.9 when they were made hard) and ``seconds``.
        """
        units = execution_order(
            q_model, lambda: forward(q_model, batches[0]),
            self._units(q_model))
        maps = self._focus_maps(fp_model, forward, batches, score_map)
        unit_maps = {}
        if self.sensitivity is not None:
            if output_loss is None:
                raise ValueError('sensitivity needs an output_loss (a task '
                                 'adapter\'s distill_loss)')
            unit_maps = sensitivity_maps(fp_model, q_model, forward, batches,
                                         units, output_loss,
                                         self.sensitivity)
        results = []
        progress = None
        if state_file is not None:
            progress = ReconstructionState(
                state_file, units, q_model, batches, self.settings(),
                targets=dict(fp_model=fp_model,
                             adapter=getattr(forward, '__self__', None),
                             maps=maps, unit_maps=unit_maps))
            results = progress.resume(q_model)
        start = time.perf_counter()
        for i in range(len(results), len(units)):
            name = units[i]
            result = self.reconstruct_unit(fp_model, q_model, name, forward,
                                           batches, maps,
                                           unit_maps.get(name))
            results.append(result)
            if progress is not None:
                progress.save(q_model, results)
            if self.log_interval and (i + 1) % self.log_interval == 0:
                print_log(
                    f'Reconstruction block {i + 1}/{len(units)} {name}: '
                    f'output error {result["error_before"]:.4g} -> '
                    f'{result["error_after"]:.4g} '
                    f'{"" if result["kept"] else "(reverted) "}'
                    f'undecided rounding {100 * result["undecided"]:.1f} % '
                    f'({result["seconds"]:.1f} s, '
                    f'{time.perf_counter() - start:.0f} s total)',
                    logger='current')
        return results

    def _units(self, q_model: nn.Module) -> List[str]:
        """The units to reconstruct: all but those inside ``skip``."""
        units = reconstruction_units(q_model, self.block_types, self.chains)

        def inside(unit, name):
            return unit == name or unit.startswith(name + '.')

        unmatched = [n for n in self.skip
                     if not any(inside(u, n) for u in units)]
        if unmatched:
            raise ValueError(f'skip: {unmatched} hold no reconstruction '
                             'unit of this model (name a module with '
                             'quantized layers, e.g. \'roi_head\')')
        return [u for u in units
                if not any(inside(u, n) for n in self.skip)]

    def settings(self) -> dict:
        """The options that decide the result (a resumed run must match)."""
        return {k: v for k, v in vars(self).items() if k != 'log_interval'}

    @torch.no_grad()
    def _focus_maps(self, fp_model, forward, batches, score_map):
        """Per batch, ``focus`` + the FP model's score map, or None."""
        if self.focus is None:
            return None
        if score_map is None:
            raise ValueError(
                'focus needs a score map of where the FP model sees objects '
                '(a detector adapter\'s score_map); this task has none')
        return [score_map(forward(fp_model, x), x) + self.focus
                for x in batches]

    def reconstruct_unit(self, fp_model, q_model, name: str,
                         forward: Forward, batches, maps=None,
                         unit_maps=None) -> dict:
        """Reconstruct one unit (see :meth:`__call__`)."""
        tic = time.perf_counter()
        fp_unit = fp_model.get_submodule(name)
        q_unit = _runnable(q_model.get_submodule(name))
        records = _capture(fp_model, q_model, fp_unit, q_unit, forward,
                           batches, maps, fp_inputs=self.fp_input_prob > 0,
                           unit_maps=unit_maps)
        weights = site_weights(records) if self.balance_sites else None
        fit, judge = self._split(records)
        error_before = _output_error(q_unit, judge, weights,
                                     self.position_mean)
        layers = [m for _, m in quantized_layers(q_unit)] \
            if not isinstance(q_unit, QUANT_MODULES) else [q_unit]
        originals = [m.weight_quantizer for m in layers]
        rounders = []
        if self.adaround:
            for m in layers:
                if m.weight_quantizer.enabled:
                    ada = AdaRoundQuantizer(m.weight_quantizer, m.weight)
                    rounders.append((m, ada))
                    m.weight_quantizer = ada
        acts = [q for m in layers for q in activation_quantizers(m)
                if q.enabled]
        # steps learned here are baked back; configured LSQ steps stay
        learned_here = [q for q in acts if not q.learnable] \
            if self.learn_act_steps else []
        steps = [q.start_step_learning() for q in acts] \
            if self.learn_act_steps else []
        groups = []
        if rounders:
            groups.append(dict(params=[a.alpha for _, a in rounders],
                               lr=self.round_lr, decay=self.round_lr_decay))
        if steps:
            groups.append(dict(params=steps, lr=self.act_lr, decay=True))
        biases = _unit_biases(q_unit, layers) if self.bias_lr else []
        if biases:
            groups.append(dict(params=biases, lr=self.bias_lr, decay=True))
        bias_state = [(b.detach().clone(), b.requires_grad) for b in biases]
        ranges = [(q.observer.min_val.clone(), q.observer.max_val.clone())
                  for q in learned_here]
        # steps the config already learns (LSQ) are put back too
        configured = [(q.scale, q.scale.detach().clone()) for q in acts
                      if q.learnable and q not in learned_here]
        try:
            if groups:
                for q in acts:
                    q.drop_prob = self.drop_prob
                for b in biases:
                    b.requires_grad_(True)
                self._optimise(q_unit, fit, groups, rounders, weights)
        finally:
            for q in acts:
                q.drop_prob = 0.
            for b, (_, grad) in zip(biases, bias_state):
                b.grad = None  # nothing left for a later optimizer
                b.requires_grad_(grad)
            undecided = _undecided_share([ada for _, ada in rounders])
            for (m, ada) in rounders:
                ada.hard = True
            for q in learned_here:
                q.bake_learned_step()
        error_after = _output_error(q_unit, judge, weights,
                                    self.position_mean)
        kept = error_after <= error_before
        if kept:
            self._bake_rounding(rounders, originals, layers)
        else:  # never leave a unit worse than nearest rounding
            for m, quantizer in zip(layers, originals):
                m.weight_quantizer = quantizer
            with torch.no_grad():
                for b, (value, _) in zip(biases, bias_state):
                    b.copy_(value)
                for q, (lo, hi) in zip(learned_here, ranges):
                    q.observer.min_val.copy_(lo)
                    q.observer.max_val.copy_(hi)
                    q._host.pop('qparams', None)
                for step, value in configured:
                    step.copy_(value)
            error_after = error_before
        return dict(name=name, error_before=error_before,
                    error_after=error_after, kept=kept, undecided=undecided,
                    seconds=time.perf_counter() - tic)

    def _split(self, records):
        """(records to fit, records to judge the result on): with
        ``holdout`` the pool's last batches (every call site of each) are
        kept out of the fit, else both are all records."""
        sites = max(r[2] for r in records) + 1 if records else 1
        held = int(round(self.holdout * len(records) / sites)) * sites
        if not self.holdout or held == 0 or held >= len(records):
            return records, records
        return records[:-held], records[-held:]

    def _optimise(self, unit, records, groups, rounders,
                  weights: Optional[Dict[int, float]] = None) -> None:
        params = [p for g in groups for p in g['params']]
        optimizer = torch.optim.Adam(groups)
        # cosine annealing of the groups marked ``decay``, the rest constant
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, [
            (lambda it: 0.5 * (1 + math.cos(math.pi * it / self.iters)))
            if g['decay'] else (lambda it: 1.) for g in groups
        ])
        decay = TemperatureDecay(self.iters, self.warmup, *self.beta)
        multi = _call_sites_in(unit)
        draw = RecordSampler(records, self.batch_size, self.mix_batches)
        for it in range(self.iters):
            x, target, site, focus, fp_x = draw()
            if fp_x is not None:
                x = torch.where(
                    torch.rand_like(x) < self.fp_input_prob, fp_x, x)
            out = _run_unit(unit, x, site, multi)
            loss = _rec_loss(out, target, self.position_mean, focus)
            if weights is not None:
                loss = loss * weights[site]
            beta = decay(it)
            if beta is not None and rounders:
                loss = loss + self.round_weight * sum(
                    a.regularizer(beta) for _, a in rounders)
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            optimizer.step()
            schedule.step()

    @staticmethod
    @torch.no_grad()
    def _bake_rounding(rounders, originals, layers) -> None:
        """Hard-rounded weights into the layers, original quantizers back
        with the grid fixed (so the weights stay exactly on it)."""
        by_layer = {id(m): ada for m, ada in rounders}
        for m, quantizer in zip(layers, originals):
            ada = by_layer.get(id(m))
            if ada is not None:
                levels = ada.integer_levels()
                m.weight.copy_(((levels - ada.zero_point) *
                                ada.scale).to(m.weight.dtype))
                quantizer.fix_qparams(ada.grid_scale, ada.grid_zero_point)
            m.weight_quantizer = quantizer


class ReconstructionState:
    """The progress of a :class:`BlockReconstruction` run, kept in a file.

    After each unit the quantized model's state dict, the results so far
    and the random number generators' states are written (atomically) to
    ``path``, tagged with a fingerprint of what the run started from: the
    unit names, the reconstruction's settings, the quantized model's state
    before the first unit, the sample pool, and what the units are fitted
    with (the FP model, the task adapter's settings, focus and sensitivity
    maps). A later run resumes from the file only when its fingerprint is
    the same; otherwise (or when the file cannot be read) it is moved
    aside to ``<path>.stale`` (``.stale.1``, ... when that exists) and the
    run starts afresh. Data-parallel ranks each keep their own file
    (``<path>.rank<r>``). A resumed run ends as the uninterrupted one
    would where the computation is deterministic (on CPU; on GPUs with
    ``deterministic=True``).

    Args:
        path (str): The state file.
        units (list[str]): The units, in the order they are reconstructed.
        q_model (nn.Module): The quantized model before the first unit.
        batches (Sequence[Tensor]): The sample pool.
        settings (dict): The reconstruction's options.
        targets (dict, optional): What else the units are fitted with,
            by name (``fp_model``: a module; ``adapter``: an object whose
            attributes are its settings; anything else: tensors, or
            lists / dicts of them).
    """

    #: what each part of the fingerprint stands for (in warnings)
    PARTS = dict(units='blocks', settings='reconstruction options',
                 model='quantized model before reconstruction',
                 pool='sample pool', fp_model='FP model',
                 adapter='task adapter settings', maps='focus maps',
                 unit_maps='sensitivity maps')

    def __init__(self, path: str, units: Sequence[str], q_model: nn.Module,
                 batches: Sequence[torch.Tensor], settings: dict,
                 targets: Optional[dict] = None) -> None:
        self.path = self.path_for(path)
        self.units = list(units)
        parts = dict(units=repr(self.units),
                     settings=repr(sorted(settings.items())),
                     model=q_model, pool=list(batches))
        parts.update(targets or {})
        #: what the run started from, by part (a mismatch names the part)
        self.fingerprint = {k: _digest(v) for k, v in parts.items()}

    def resume(self, q_model: nn.Module) -> List[dict]:
        """Load a matching state into ``q_model``; the finished units'
        results (empty when there is nothing to resume)."""
        if not osp.exists(self.path):
            return []
        try:
            state = torch.load(self.path, map_location='cpu',
                               weights_only=True)
            left = dict(state['fingerprint'])
        except Exception as e:  # unreadable: keep it, start afresh
            return self._set_aside(f'cannot be read ({e})')
        differ = [self.PARTS.get(k, k) for k, v in self.fingerprint.items()
                  if left.get(k) != v]
        if differ:
            return self._set_aside('was left by a reconstruction with '
                                   f'another {", ".join(differ)}')
        q_model.load_state_dict(state['model'])
        torch.set_rng_state(state['rng'])
        if state.get('cuda_rng') is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(state['cuda_rng'])
        results = list(state['results'])
        print_log(f'Reconstruction resumed from {self.path}: '
                  f'{len(results)}/{len(self.units)} blocks done',
                  logger='current')
        return results

    def _set_aside(self, why: str) -> List[dict]:
        stale, n = self.path + '.stale', 0
        while osp.exists(stale):  # never overwrite an earlier one
            n += 1
            stale = f'{self.path}.stale.{n}'
        os.replace(self.path, stale)
        print_log(f'{self.path} {why}: not resumed, kept as {stale}',
                  logger='current', level=30)
        return []

    def save(self, q_model: nn.Module, results: List[dict]) -> None:
        """Write the state after ``len(results)`` finished units."""
        buffer = io.BytesIO()
        torch.save(
            dict(fingerprint=self.fingerprint, units=self.units,
                 results=list(results),
                 model={k: v.detach().cpu()
                        for k, v in q_model.state_dict().items()},
                 rng=torch.get_rng_state(),
                 cuda_rng=torch.cuda.get_rng_state()
                 if torch.cuda.is_available() else None), buffer)
        atomic_write_bytes(self.path, buffer.getvalue())

    @staticmethod
    def path_for(path: str) -> str:
        """This process's file: ``path``, or ``<path>.rank<r>`` when
        several processes run."""
        rank, world = get_dist_info()
        return path if world == 1 else f'{path}.rank{rank}'

    @classmethod
    def remove(cls, path: str) -> None:
        """Delete this process's file of ``path`` (once the finished
        result is saved elsewhere)."""
        mine = cls.path_for(path)
        if osp.exists(mine):
            os.remove(mine)


def _digest(value) -> str:
    """SHA-1 of a fingerprint part: text, a module's state, an object's
    settings, or tensors (possibly in lists / dicts; None allowed)."""
    digest = hashlib.sha1()

    def add(v):
        if isinstance(v, nn.Module):
            for key, t in v.state_dict().items():
                digest.update(key.encode())
                _hash_tensor(digest, t)
        elif isinstance(v, torch.Tensor):
            _hash_tensor(digest, v)
        elif isinstance(v, (list, tuple)):
            digest.update(f'[{len(v)}'.encode())
            for item in v:
                add(item)
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                digest.update(repr(k).encode())
                add(v[k])
        elif v is None or isinstance(v, (str, int, float, bool)):
            digest.update(repr(v).encode())
        else:  # an object: its settings
            add({k: a for k, a in sorted(vars(v).items())
                 if isinstance(a, (str, int, float, bool, list, tuple,
                                   dict, type(None)))})

    add(value)
    return digest.hexdigest()


def _hash_tensor(digest, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    digest.update(str((t.dtype, tuple(t.shape))).encode())
    if t.numel():
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


@torch.no_grad()
def correct_bias(fp_model: nn.Module, q_model: nn.Module, forward: Forward,
                 batches: Sequence[torch.Tensor]) -> Dict[str, float]:
    """Remove each quantized layer's per-channel output mean shift.

    Layer by layer in execution order (so each correction sees the
    corrected layers before it), the mean output of the quantized layer and
    of its FP counterpart are measured on ``batches``; the difference is
    added to the layer's bias, or, for a bias-free conv followed by
    BatchNorm, to that BN's running mean. Nothing in the model's structure
    changes. Layers with neither are left as they are.

    Args:
        fp_model (nn.Module): The FP model.
        q_model (nn.Module): Its fake-quantized copy (ranges frozen).
        forward (Callable): ``forward(model, x)`` runs a model on a batch.
        batches (Sequence[Tensor]): Generated (or Gaussian) batches.

    Returns:
        dict[str, float]: Layer name -> norm of the removed shift.
    """
    names = [n for n, _ in quantized_layers(q_model)]
    order = execution_order(q_model, lambda: forward(q_model, batches[0]),
                            names)
    following_bn = _bn_after_each_layer(q_model,
                                        lambda: forward(q_model, batches[0]),
                                        order)
    shifts = {}
    for name in order:
        q_layer = q_model.get_submodule(name)
        fp_layer = fp_model.get_submodule(name)
        sums = {}

        def make_hook(key):

            def hook(module, args, output):
                if output.numel():
                    axis = 1 if output.dim() > 2 else output.dim() - 1
                    dims = [d for d in range(output.dim()) if d != axis]
                    sums.setdefault(key, []).append(
                        (output.float().sum(dims),
                         output.numel() // output.shape[axis]))

            return hook

        _run_both(fp_model, q_model, forward, batches, [
            q_layer.register_forward_hook(make_hook('q')),
            fp_layer.register_forward_hook(make_hook('fp'))
        ])
        if 'q' not in sums:
            continue
        mean = {k: sum(s for s, _ in v) / sum(n for _, n in v)
                for k, v in sums.items()}
        shift = mean['fp'] - mean['q']
        if q_layer.bias is not None:
            q_layer.bias.add_(shift.to(q_layer.bias.dtype))
        elif name in following_bn:
            bn = q_model.get_submodule(following_bn[name])
            bn.running_mean.sub_(shift.to(bn.running_mean.dtype))
        else:
            continue
        shifts[name] = float(shift.norm())
    return shifts


def _bn_after_each_layer(model: nn.Module, run, layer_names) -> Dict[str,
                                                                     str]:
    """Layer name -> the BN that normalises its output (same width, the
    only BN that follows it)."""
    from mmddaq.importance import layer_of_each_bn
    by_layer: Dict[str, List[str]] = {}
    for bn, layer in layer_of_each_bn(model, run, layer_names).items():
        by_layer.setdefault(layer, []).append(bn)
    mapping = {}
    for layer, bns in by_layer.items():
        module = model.get_submodule(layer)
        bn = model.get_submodule(bns[0])
        width = getattr(module, 'out_channels',
                        getattr(module, 'out_features', None))
        if len(bns) == 1 and bn.running_mean is not None and \
                bn.num_features == width:
            mapping[layer] = bns[0]
    return mapping


__all__ = ['BlockReconstruction', 'ReconstructionState', 'call_site',
           'correct_bias', 'execution_order', 'focus_weights', 'site_weights',
           'reconstruction_units', 'DEFAULT_BLOCK_TYPES']
