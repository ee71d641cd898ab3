"""What the quantized activations of each group of layers cost a quantized
model's metric: it is evaluated with everything quantized, with every
activation in float (weights still quantized), and with each group's
inputs in float in turn.

    python tools/activation_gaps.py \
        configs/ddaq_retinanet_r18-w16_frozenbn_w4a4.py \
        work_dirs/benchmark/frozenbn-retinanet/ddaq_w4a4_s0/iter_400.pth \
        --split tune --each neck.lateral_convs neck.fpn_convs \
        --out gaps.json --plot gaps.png

With ``--pool N`` nothing is read from a dataset: the "metric" is minus
the task adapter's FP-vs-quantized distillation loss on N samples of the
algorithm's own generator (seeded), i.e. the data-free view of the same
question; ``--pool N --real`` takes the loss on the first N test-loader
images instead (does the loss or do the samples disagree with the
metric?). ``--score map`` replaces the loss by the COCO bbox mAP of the
quantized detector's boxes against the FP detector's own boxes scoring
``--score-thr`` or more on the same samples (``mmddaq.apis.agreement``):
the metric's question, asked of the FP model instead of a dataset.

Groups are the first ``--depth`` parts of the layer names
(``backbone.layer2``, ``neck.lateral_convs``, ``bbox_head.cls_convs``);
layers under an ``--each`` prefix count one by one. Evaluation runs the
config's test loop (``--split tune``: the shapes sets' tuning split, so the
reported split is not looked at), one full pass per row.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmddaq.apis import build_runner, load_config, run_test  # noqa: E402
from mmddaq.datasets import tune_options  # noqa: E402
from mmddaq.engine.hooks.utils import algorithm_of  # noqa: E402
from mmddaq.quantization.analysis import (activation_gaps,  # noqa: E402
                                          layer_groups)

METRICS = ('coco/bbox_mAP', 'accuracy/top1')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='the quantized model\'s (DDAQ) config')
    p.add_argument('checkpoint', help='its quantized checkpoint')
    p.add_argument('--split', choices=['val', 'tune'], default='tune',
                   help='shapes split to evaluate on (tune: where recipes '
                   'are chosen)')
    p.add_argument('--depth', type=int, default=2,
                   help='name parts that make a group')
    p.add_argument('--each', nargs='*', default=[],
                   help='prefixes whose layers are measured one by one')
    p.add_argument('--metric', default=None,
                   help=f'test metric (default: the first of {METRICS} '
                   'the test loop reports)')
    p.add_argument('--pool', type=int, default=0,
                   help='data-free: minus the distillation loss on this '
                   'many generated samples instead of the test metric')
    p.add_argument('--real', action='store_true',
                   help='--pool: the test loader\'s images instead of '
                   'generated ones')
    p.add_argument('--score', choices=['kd', 'map'], default='kd',
                   help='--pool: minus the distillation loss (kd) or the '
                   'mAP against the FP detector\'s boxes (map)')
    p.add_argument('--score-thr', type=float, default=None,
                   help='--score map: FP score from which a box counts '
                   'as an object (default 0.3)')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the --pool samples')
    p.add_argument('--out', required=True, help='JSON rows (a new file)')
    p.add_argument('--plot', help='PNG bar chart of the gains')
    p.add_argument('--work-dir', default='work_dirs/activation_gaps')
    return p.parse_args(argv)


def check_paths(args) -> None:
    """Fail before any work on a missing input or an existing output."""
    for path, what in ((args.config, 'config'),
                       (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            raise SystemExit(f'{what} not found: {path}')
    for path in (args.out, args.plot):
        if path and osp.exists(path):
            raise SystemExit(f'{path} exists: pick another name (nothing '
                             'is overwritten)')


def plot(rows, metric, path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    shown = rows[1:]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    ax.barh(range(len(shown)), [r['gain'] for r in shown], color='tab:blue')
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([r['group'] for r in shown], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color='black', lw=0.8)
    ax.set_xlabel(f'{metric} gain with these inputs in float '
                  f'(all quantized: {rows[0]["value"]:.4g})')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pool_batches(algorithm, num_samples: int, seed: int, source=None):
    """``num_samples`` samples in batches of 8 from the algorithm's
    generator (seeded; in eval mode) or from another sample ``source``."""
    import torch

    from mmddaq.generators.sources import AlgorithmSamples
    algorithm.eval()
    torch.manual_seed(seed)
    return (source or AlgorithmSamples())(algorithm, num_samples, 8)


def pool_loss(algorithm, num_samples: int, seed: int, source=None):
    """A function giving minus the mean FP-vs-quantized distillation loss
    on ``num_samples`` samples of the algorithm's generator (or of another
    sample ``source``)."""
    from mmddaq.quantization import observation_disabled
    from mmddaq.quantization.output_tuning import (PairedForward,
                                                   mean_output_loss)
    batches = pool_batches(algorithm, num_samples, seed, source)
    # (two-stage detectors: the quantized RoI head runs on the FP proposals)
    run = PairedForward(algorithm.fp_model, algorithm.quantized,
                        algorithm.adapter.forward)

    def evaluate() -> float:
        with observation_disabled(algorithm.quantized):
            return -mean_output_loss(run, algorithm.adapter.distill_loss,
                                     batches)

    return evaluate


def pool_agreement(algorithm, num_samples: int, seed: int, source=None,
                   score_thr: float = 0.3):
    """A function giving the quantized detector's COCO mAP against the FP
    detector's boxes on ``num_samples`` samples (see ``pool_loss``)."""
    from mmddaq.apis.agreement import agreement_map, detect
    from mmddaq.quantization import observation_disabled
    batches = pool_batches(algorithm, num_samples, seed, source)
    reference = [d for x in batches for d in detect(algorithm.fp_model, x)]
    if not any(bool((d['scores'] >= score_thr).any()) for d in reference):
        raise SystemExit(f'the FP detector finds no box scoring {score_thr} '
                         'or more on these samples: nothing to compare '
                         'with (lower --score-thr)')

    def evaluate() -> float:
        with observation_disabled(algorithm.quantized):
            found = [d for x in batches
                     for d in detect(algorithm.quantized, x)]
        return agreement_map(reference, found, score_thr)

    return evaluate


def main(argv=None):
    args = parse_args(argv)
    if args.real and not args.pool:
        raise SystemExit('--real needs --pool N')
    if args.score != 'kd' and not args.pool:
        raise SystemExit('--score needs --pool N (the test split has its '
                         'own metric)')
    if args.score_thr is not None and args.score != 'map':
        raise SystemExit('--score-thr is for --score map')
    check_paths(args)
    cfg = load_config(args.config, {})
    if args.split == 'tune':
        root = cfg.get('data_root')
        if not root:
            raise SystemExit('--split tune needs a config with a data_root '
                             '(the shapes sets)')
        cfg = load_config(args.config, tune_options(root.rstrip('/')))
    runner = build_runner(cfg, args.work_dir, 'activation_gaps')
    runner.load_checkpoint(args.checkpoint)
    q_model = algorithm_of(runner).quantized
    metric = args.metric

    def test_metric() -> float:
        nonlocal metric
        result = run_test(runner)
        if metric is None:
            metric = next((m for m in METRICS if m in result), None)
            if metric is None:
                raise SystemExit(f'none of {METRICS} in the test metrics '
                                 f'{sorted(result)}: pass --metric')
        if metric not in result:
            raise SystemExit(f'{metric} not in the test metrics '
                             f'{sorted(result)}')
        return result[metric]

    if args.pool:
        from mmddaq.generators.sources import RealSamples
        source = RealSamples(cfg.test_dataloader) if args.real else None
        if args.score == 'map':
            from mmdet.models.detectors import BaseDetector
            if not isinstance(algorithm_of(runner).fp_model, BaseDetector):
                raise SystemExit('--score map compares detections: the '
                                 'config\'s model is not an mmdet detector')
            thr = 0.3 if args.score_thr is None else args.score_thr
            metric = f'mAP vs FP boxes (score >= {thr})'
            evaluate = pool_agreement(algorithm_of(runner), args.pool,
                                      args.seed, source, thr)
        else:
            metric, evaluate = 'minus distill_loss', pool_loss(
                algorithm_of(runner), args.pool, args.seed, source)
    else:
        evaluate = test_metric

    groups = layer_groups(q_model, args.depth, args.each)
    rows = activation_gaps(q_model, groups, evaluate)
    for r in rows:
        r.update(metric=metric,
                 split=(f'{args.split} images ({args.pool})' if args.real
                        else f'generated ({args.pool})') if args.pool
                 else args.split, checkpoint=args.checkpoint)
        print(f'[activation_gaps] {r["group"]}: {r["value"]:.4f} '
              f'({r["gain"]:+.4f})', flush=True)
    with open(args.out, 'w') as f:
        json.dump(rows, f, indent=1)
    if args.plot:
        plot(rows, metric, args.plot)
    print(f'[activation_gaps] {len(rows)} rows -> {args.out}')


if __name__ == '__main__':
    main()
