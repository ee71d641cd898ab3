"""Allocate mixed-precision weight bits from layer importance.

Measures the importance of every quantized layer of a DDAQ config's FP
model without data (the importance method and inputs of the config's
``LayerImportanceHook``, Gaussian inputs by default), allocates weight
bit-widths under an average-bits budget (:class:`GreedyBitAllocator`) and
writes a new config that inherits CONFIG and sets
``model.quantizer.layer_bits``::

    python tools/allocate_bits.py configs/ddaq_resnet18-w16_digits_w4a4.py \
        --avg-w-bits 4 --out configs/mixed/my_mixed_config.py
    python tools/train.py configs/mixed/my_mixed_config.py

The budget is the average number of bits per weight over the layers the
allocation decides. Layers whose bits a rule of CONFIG's quantizer fixes
(``first_last_bits``, ``overrides`` with ``w_bits``) keep those bits and are
left out of the budget, so a mixed config at budget B has the size of the
uniform CONFIG at B weight bits. Activations keep CONFIG's bits.
"""
import argparse
import copy
import os
import os.path as osp
import shlex
import sys
import tempfile
import textwrap
from typing import Optional

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

import mmddaq  # noqa: E402,F401  (registers modules, safe checkpoints)
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import (MODELS, DefaultScope,  # noqa: E402
                               init_default_scope)

from mmddaq.quantization import (DEFAULT_CANDIDATES,  # noqa: E402
                                 GreedyBitAllocator, LayerCost,
                                 average_bits, pinned_layers,
                                 quantized_layers, weight_quant_error,
                                 weight_size_bits)
from mmddaq.registry import IMPORTANCE  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='DDAQ config to inherit')
    p.add_argument('--checkpoint',
                   help='FP weights (default: the config\'s fp_checkpoint)')
    p.add_argument('--avg-w-bits', type=float, required=True,
                   help='budget: average weight bits of the allocated layers')
    p.add_argument('--candidates', type=int, nargs='+',
                   default=list(DEFAULT_CANDIDATES),
                   help='allowed weight bit-widths')
    p.add_argument('--out', required=True, help='config file to write (.py)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace --out if it exists')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the importance inputs and probes')
    p.add_argument('--importance-options', nargs='+', action=DictAction,
                   default={},
                   help='override options of the config\'s importance '
                   'method, e.g. num_batches=8 num_probes=16 (a finer '
                   'Hessian-trace estimate)')
    p.add_argument('--plot', help='also save a bar chart (PNG) of the bits')
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def _check_paths(args) -> None:
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file "{args.config}" does not exist')
    if not args.out.endswith('.py'):
        raise ValueError(f'--out must be a .py config file, got "{args.out}"')
    if osp.abspath(args.out) == osp.abspath(args.config):
        raise ValueError('--out must differ from CONFIG: the new config '
                         'inherits it')
    if osp.exists(args.out) and not args.overwrite:
        raise FileExistsError(
            f'"{args.out}" exists; pass --overwrite to replace it (nothing '
            'was written)')


def _importance_hook(cfg: Config):
    """Importance method and sample source of the config's importance hook."""
    for hook in cfg.get('custom_hooks', None) or []:
        if str(hook.get('type', '')).split('.')[-1] == 'LayerImportanceHook':
            return (copy.deepcopy(hook.get('method',
                                           dict(type='HessianImportance'))),
                    hook.get('sample_source', 'gaussian'))
    return dict(type='HessianImportance'), 'gaussian'


def measure(cfg: Config,
            checkpoint: str,
            candidates,
            seed: int = 0,
            importance_options: Optional[dict] = None):
    """Importance and per-bit cost of every quantized layer of ``cfg``.

    The cost of ``b`` bits is the layer's importance (measured at the
    config's weight bits) scaled by how its weight's quantization error at
    ``b`` bits compares with the error at those bits.

    Args:
        cfg (Config): The DDAQ config.
        checkpoint (str): FP weights.
        candidates (Sequence[int]): Bit-widths to price.
        seed (int): Seed of the model build, inputs and probes.
        importance_options (dict, optional): Overrides of the importance
            method's options.

    Returns:
        dict: ``layers`` (name -> dict of ``numel``, ``importance``,
        ``costs``, ``pinned`` bits or None), ``method`` (importance
        method name), ``sample_source`` and ``fp_model`` (the float model
        with the FP weights).
    """
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.quantizer.pop('layer_bits', None)
    model_cfg.fp_checkpoint = checkpoint
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.eval()
    method_cfg, sample_source = _importance_hook(cfg)
    method_cfg.update(importance_options or {})
    with DefaultScope.overwrite_default_scope('mmddaq'):
        method = IMPORTANCE.build(method_cfg)
    device = model.device_of()

    def sample_fn(batch_size):
        if sample_source == 'model':
            return model.generate(batch_size)
        return torch.randn(batch_size, *model.input_shape, device=device)

    torch.manual_seed(seed)
    importance = method(model.fp_model, model.quantized, sample_fn,
                        model.adapter)
    pinned = pinned_layers(dict(model_cfg.quantizer), model.fp_model)
    w_cfg = dict(model_cfg.quantizer.get('weight_quantizer') or {})
    layers = {}
    for name, q_layer in quantized_layers(model.quantized):
        weight = model.fp_model.get_submodule(name).weight
        entry = dict(numel=weight.numel(), importance=importance[name],
                     pinned=pinned.get(name), costs=None)
        if name not in pinned:
            ref_bits = q_layer.weight_quantizer.bits
            if not q_layer.weight_quantizer.enabled:
                raise ValueError(
                    f'layer "{name}" keeps float weights in CONFIG (w_bits '
                    f'{ref_bits}); set model.quantizer.w_bits to the bits '
                    'the importance should be measured at (e.g. 4)')
            with torch.no_grad():
                ref = float((q_layer.weight_quantizer(weight) -
                             weight).pow(2).sum())
            entry['costs'] = {
                b: 0. if ref <= 0 else importance[name] *
                weight_quant_error(weight, b, w_cfg) / ref
                for b in candidates
            }
        layers[name] = entry
    return dict(layers=layers, method=type(method).__name__,
                sample_source=sample_source, fp_model=model.fp_model)


def render_config(base_rel: str,
                  bits,
                  info,
                  header,
                  fp_checkpoint: Optional[str] = None) -> str:
    """Text of the mixed-precision config.

    Args:
        base_rel (str): Path of the base config relative to the new one.
        bits (dict[str, int]): Allocated weight bits.
        info (dict): Per-layer ``importance`` and ``numel``.
        header (list[str]): Comment lines (may contain newlines).
        fp_checkpoint (str, optional): FP weights to set in the config.
    """
    lines = []
    for entry in header:
        lines += [f'# {line}'.rstrip() for line in entry.splitlines()]
    lines += [f"_base_ = ['{base_rel}']", '', 'model = dict(']
    if fp_checkpoint:
        lines.append(f'    fp_checkpoint={fp_checkpoint!r},')
    lines += ['    quantizer=dict(', '        layer_bits={',
              '            # layer: weight bits,  # importance, weights']
    for name, b in bits.items():
        layer = info[name]
        lines.append(f"            '{name}': {b},  "
                     f"# {layer['importance']:.4g}, {layer['numel']}")
    lines += ['        }))', '']
    return '\n'.join(lines)


def plot_allocation(path: str, info, bits) -> None:
    """Bar chart of the weight bits of every layer.

    The line is the importance per weight (the layer's importance divided by
    its number of weights, scaled to mean 1): what the allocation ranks.
    Grey bars are layers pinned by the base config.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(info)
    values = [bits.get(n, info[n]['pinned']) for n in names]
    colors = ['tab:gray' if info[n]['pinned'] is not None else 'tab:blue'
              for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(names)), 5))
    ax.bar(range(len(names)), values, color=colors)
    ax.set_ylabel('weight bits (bars)')
    ax.set_ylim(0, max(values) + 1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f'{n} ({info[n]["numel"]})' for n in names],
                       rotation=75, ha='right', fontsize=7)
    per_weight = [info[n]['importance'] / info[n]['numel'] for n in names]
    mean = sum(per_weight) / len(per_weight) or 1.
    ax2 = ax.twinx()
    ax2.plot(range(len(names)), [v / mean for v in per_weight], 'o-',
             color='tab:red')
    ax2.set_yscale('log')
    ax2.set_ylabel('importance per weight (log)', color='tab:red')
    ax.set_title(f'Mixed precision: {average_bits(bits, _numels(info)):.3f} '
                 'bits/weight over allocated layers', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _numels(info):
    return {n: v['numel'] for n, v in info.items()}


def main(argv=None):
    args = parse_args(argv)
    try:
        _check_paths(args)
        allocator = GreedyBitAllocator(args.candidates, args.avg_w_bits)
        cfg = Config.fromfile(args.config)
        checkpoint = args.checkpoint or cfg.model.get('fp_checkpoint')
        if not checkpoint:
            raise ValueError('no FP weights: the config has no '
                             'model.fp_checkpoint; pass --checkpoint')
        if '://' not in checkpoint and not osp.isfile(checkpoint):
            raise FileNotFoundError(f'FP checkpoint "{checkpoint}" does not '
                                    'exist')
        if cfg.model.quantizer.get('layer_bits'):
            print('Note: the layer_bits of CONFIG are replaced by the new '
                  'allocation.')
        result = measure(cfg, checkpoint, allocator.candidates, args.seed,
                         args.importance_options)
        info = result['layers']
        free = [
            LayerCost(n, v['numel'], v['costs']) for n, v in info.items()
            if v['pinned'] is None
        ]
        if not free:
            raise ValueError('every quantized layer has its bits fixed by '
                             'CONFIG (first_last_bits/overrides): nothing to '
                             'allocate')
        bits = allocator.allocate(free)
        achieved = average_bits(bits, _numels(info))
        text, size = _config_text(args, cfg, checkpoint, result, bits,
                                  achieved)
        _write(args, text, bits, result['fp_model'])
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        raise SystemExit(f'allocate_bits.py: error: {e}')
    print(f'Allocated {len(bits)} layers ({result["method"]}):')
    for name, v in info.items():
        b = bits.get(name, v['pinned'])
        tag = ' (pinned)' if v['pinned'] is not None else ''
        print(f'  {name:40s} {b} bits  importance {v["importance"]:.4g}  '
              f'{v["numel"]} weights{tag}')
    print(f'Budget {args.avg_w_bits:g}, achieved {achieved:.4f} bits/weight '
          f'over allocated layers; all quantized weights: '
          f'{size["quantized_bits"]} bits '
          f'({size["quantized_bits"] / size["quantized_weights"]:.4f} '
          f'bits/weight). Wrote {args.out}')
    if args.plot:
        plot_allocation(args.plot, info, bits)
        print(f'Plot: {args.plot}')


def _size_with(cfg: Config, fp_model, bits=None):
    """The config's quantizer (with ``bits`` as its layer_bits if given)
    and the weight size it gives ``fp_model``."""
    q_cfg = copy.deepcopy(dict(cfg.model.quantizer))
    if bits is not None:
        q_cfg['layer_bits'] = dict(bits)
    quantizer = MODELS.build(q_cfg)
    return quantizer, weight_size_bits(quantizer.quantize(fp_model))


def _config_text(args, cfg, checkpoint, result, bits, achieved):
    info = result['layers']
    _, size = _size_with(cfg, result['fp_model'], bits)
    pinned = {n: v['pinned'] for n, v in info.items()
              if v['pinned'] is not None}
    n_free = sum(v['numel'] for n, v in info.items() if n in bits)
    command = ' \\\n      '.join(textwrap.wrap(
        ' '.join(shlex.quote(a) for a in ['python', 'tools/allocate_bits.py']
                 + [a for a in args.argv if a != '--overwrite']),
        width=70, break_long_words=False, break_on_hyphens=False))
    header = [
        'Mixed-precision weights allocated from layer importance.',
        f'Written by:\n  {command}',
        f'Importance: {result["method"]} on {result["sample_source"]} '
        f'inputs (seed {args.seed}),\n  FP weights {checkpoint}.',
        f'Budget: {args.avg_w_bits:g} bits/weight on average over the '
        f'{len(bits)} allocated layers\n  ({n_free} weights);',
        f'  {len(pinned)} layers pinned by the base config are excluded and '
        'keep their bits' + (f' ({sorted(set(pinned.values()))}).'
                             if pinned else '.'),
        f'Candidates: {", ".join(map(str, sorted(set(args.candidates))))}.'
        ' Activations keep the base config\'s bits.',
        f'Achieved: {achieved:.4f} bits/weight over the allocated layers; '
        f'all quantized',
        f'  conv/linear weights: {size["quantized_bits"]} bits '
        f'({size["quantized_bits"] / size["quantized_weights"]:.4f} '
        f'bits/weight, {size["quantized_weights"]} weights).',
    ]
    if args.checkpoint and args.checkpoint != cfg.model.get('fp_checkpoint'):
        header.append('The allocation is for the weights above, so the '
                      'config uses them.')
    out_dir = osp.dirname(osp.abspath(args.out))
    base_rel = osp.relpath(osp.abspath(args.config), out_dir)
    own_ckpt = args.checkpoint and \
        args.checkpoint != cfg.model.get('fp_checkpoint')
    text = render_config(base_rel, bits, info, header,
                         args.checkpoint if own_ckpt else None)
    return text, size


def _write(args, text, bits, fp_model) -> None:
    """Write ``text`` to ``--out`` after checking that it loads and builds."""
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.py', prefix='.allocate_',
                               dir=out_dir)
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        check = Config.fromfile(tmp)
        quantizer, _ = _size_with(check, fp_model)
        plan = quantizer.plan(fp_model)
        wrong = {n: plan[n][0] for n, b in bits.items() if plan[n][0] != b}
        if wrong:
            raise ValueError(f'the written config does not give the '
                             f'allocated bits (precedence?): {wrong}')
        if osp.exists(args.out) and not args.overwrite:
            raise FileExistsError(f'"{args.out}" appeared meanwhile; nothing '
                                  'was written')
        os.replace(tmp, args.out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


if __name__ == '__main__':
    main()
