"""Per-layer, per-call activation quantization error of a detector, with one
shared range per layer and with one range per call site (FPN level).

    python tools/level_errors.py configs/ddaq_retinanet_r18-w16_shapes_w4a4.py \
        --split tune --out docs/benchmarks/shapes_level_errors.json \
        --plot docs/benchmarks/shapes_level_errors.png

Both models are calibrated like the ``ptq`` baseline (min-max ranges on
Gaussian noise, no data); the error is then measured on test-loader images
(``--split tune``: the shapes tuning split), which never touch the ranges.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

import mmddaq  # noqa: E402,F401
from mmddaq.apis import build_runner, load_config  # noqa: E402
from mmddaq.apis.baselines import derive_method  # noqa: E402
from mmddaq.datasets import SHAPES_TUNE_OPTIONS  # noqa: E402
from mmddaq.engine.hooks.utils import algorithm_of  # noqa: E402
from mmddaq.generators.sources import RealSamples  # noqa: E402
from mmddaq.quantization.analysis import activation_error_by_call  # noqa

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='a DDAQ detector config')
    p.add_argument('--checkpoint', help='FP checkpoint (default: the '
                   "config's fp_checkpoint)")
    p.add_argument('--split', choices=['val', 'tune'], default='tune',
                   help='shapes split the error is measured on')
    p.add_argument('--images', type=int, default=64,
                   help='test-loader images to measure on')
    p.add_argument('--bits', type=int, default=4)
    p.add_argument('--out', required=True, help='JSON rows written here')
    p.add_argument('--plot', help='PNG of the head layers\' errors')
    p.add_argument('--work-dir', default='work_dirs/level_errors')
    return p.parse_args(argv)


def measure(cfg, images, work_dir, name):
    runner = build_runner(derive_method(cfg, 'ptq'), work_dir, name)
    runner.train()  # calibration on Gaussian noise
    algo = algorithm_of(runner)
    batches = RealSamples(cfg.test_dataloader)(
        algo, images, cfg.test_dataloader.batch_size)
    return activation_error_by_call(algo.quantized, algo.adapter.forward,
                                    batches)


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    heads = [r for r in rows if r['calls'] > 1]
    layers = list(dict.fromkeys(r['layer'] for r in heads))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.4 * len(layers) + 2),
                             sharey=True)
    for ax, ranges in zip(axes, ('shared', 'per-call')):
        calls = max(r['call'] for r in heads) + 1
        grid = torch.full((len(layers), calls), float('nan'))
        for r in heads:
            if r['ranges'] == ranges:
                grid[layers.index(r['layer']), r['call']] = r['rel_error']
        im = ax.imshow(torch.log10(grid).numpy(), cmap='viridis',
                       vmin=-3, vmax=0, aspect='auto')
        ax.set_title(f'{ranges} range')
        ax.set_xlabel('call (FPN level)')
        ax.set_xticks(range(calls))
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers, fontsize=7)
    fig.colorbar(im, ax=axes, label='log10 relative input error')
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    opts = {'model.quantizer.w_bits': args.bits,
            'model.quantizer.a_bits': args.bits}
    if args.checkpoint:
        opts['model.fp_checkpoint'] = args.checkpoint
    if args.split == 'tune':
        opts.update(SHAPES_TUNE_OPTIONS)
    rows = []
    for ranges, call_sites in (('shared', None), ('per-call', 'dense_heads')):
        cfg = load_config(args.config,
                          dict(opts, **{'model.quantizer.call_sites':
                                        call_sites}))
        result = measure(cfg, args.images,
                         osp.join(args.work_dir, ranges), ranges)
        calls = {}
        for r in result:
            calls[r['layer']] = max(calls.get(r['layer'], 0), r['call'] + 1)
        for r in result:
            rows.append(dict(r, ranges=ranges, calls=calls[r['layer']],
                             split=args.split))
        worst = max((r for r in result if calls[r['layer']] > 1),
                    key=lambda r: r['rel_error'], default=None)
        if worst:
            print(f'[level_errors] {ranges}: worst head input error '
                  f'{worst["rel_error"]:.3g} at {worst["layer"]} call '
                  f'{worst["call"]}', flush=True)
    with open(args.out, 'w') as f:
        json.dump(rows, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    print(f'[level_errors] {len(rows)} rows -> {args.out}')


if __name__ == '__main__':
    main()
