"""Accuracy and cost benchmarks of mmddaq against its baselines.

    python tools/benchmark.py --suite digits --out docs/benchmarks/digits.json
    python tools/benchmark.py --suite shapes-retinanet \
        --out docs/benchmarks/shapes.json --bits 8 4
    python tools/benchmark.py --config my_ddaq_detector.py \
        --checkpoint my_fp.pth --out results.json --bits 8 4
    python tools/benchmark.py --report docs/benchmarks/digits.json \
        --markdown docs/benchmarks.md

Each result is one JSON row::

    {"suite", "model", "method", "w_bits", "a_bits", "seed", "metric",
     "value", "seconds"[, "post_training_seconds", "peak_memory_mb"]}

(``seconds``: training and post-training; ``post_training_seconds``: the
pool, ranges and reconstruction after training; ``peak_memory_mb``: the
process's peak during training and post-training, resident set on CPU,
allocated on CUDA.)

Suites ``digits``, ``shapes-retinanet`` and ``shapes-faster-rcnn`` train
their FP model (and generate the shapes data) when missing. With ``--config``
any DDAQ config is benchmarked the same way; the baselines and ablations are
derived from it (:mod:`mmddaq.apis.baselines`).

Rows are appended to ``--out`` as soon as a run ends, so a long benchmark
can be interrupted and continued (runs already in the file are skipped).
"""
import argparse
import itertools
import json
import os
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmddaq.apis import (build_runner, ensure_fp_checkpoint,  # noqa: E402
                         load_config, run_test, train_and_test)
from mmddaq.apis.baselines import DERIVED_METHODS, derive_method  # noqa: E402
from mmddaq.datasets import (SHAPES_TUNE_OPTIONS, ensure_patches,  # noqa
                             ensure_shapes, ensure_small_shapes,
                             tune_options)

DETECTION_METRICS = dict(bbox_mAP='coco/bbox_mAP',
                         bbox_mAP_50='coco/bbox_mAP_50')

def frozenbn_suite(detector: str) -> dict:
    """The frozen-BN suite of ``detector`` (``'retinanet'``,
    ``'faster-rcnn'`` or ``'retinanet-p3'``): the patch-pretrained backbone,
    BN frozen, the small shapes set; its configs are named after the
    detector."""
    return dict(
        model=f'{detector}-r18-w16-frozenbn',
        pretrain=('configs/fp_resnet18-w16_patches.py',
                  'work_dirs/fp_resnet18-w16_patches'),
        fp_config=f'configs/fp_{detector}_r18-w16_frozenbn.py',
        fp_work_dir=f'work_dirs/fp_{detector}_r18-w16_frozenbn',
        ddaq_config=f'configs/ddaq_{detector}_r18-w16_frozenbn_w4a4.py',
        metrics=DETECTION_METRICS,
        tune_options=tune_options('data/shapes_small'),
        methods={m: None for m in DERIVED_METHODS},
        methods_8bit=('ptq', 'ptq-mse', 'zeroq', 'ddaq'),
        data='shapes-small')


SUITES = {
    'digits':
    dict(
        model='resnet18-w16',
        fp_config='configs/fp_resnet18-w16_digits.py',
        fp_work_dir='work_dirs/fp_resnet18-w16_digits',
        ddaq_config='configs/ddaq_resnet18-w16_digits_w4a4.py',
        metrics=dict(top1='accuracy/top1'),
        tune_options={'val_dataloader.dataset.split': 'tune',
                      'test_dataloader.dataset.split': 'tune'},
        methods=dict(
            ptq='configs/baselines/ptq_resnet18-w16_digits_w4a4.py',
            **{
                'ptq-mse':
                'configs/baselines/ptq-mse_resnet18-w16_digits_w4a4.py',
                'qdrop-real':
                'configs/baselines/qdrop-real_resnet18-w16_digits_w4a4.py',
                'ddaq-kd':
                'configs/baselines/ddaq-kd_resnet18-w16_digits_w4a4.py',
            },
            genie='configs/baselines/genie_resnet18-w16_digits_w4a4.py',
            zeroq='configs/baselines/zeroq_resnet18-w16_digits_w4a4.py',
            gdfq='configs/baselines/gdfq_resnet18-w16_digits_w4a4.py',
            qat='configs/baselines/qat_resnet18-w16_digits_w4a4.py',
            ddaq='configs/ddaq_resnet18-w16_digits_w4a4.py',
            **{
                'ddaq-no-d1':
                'configs/ablations/ddaq-no-d1_resnet18-w16_digits_w4a4.py',
                'ddaq-no-d2':
                'configs/ablations/ddaq-no-d2_resnet18-w16_digits_w4a4.py',
                'ddaq-uniform':
                'configs/ablations/ddaq-uniform_resnet18-w16_digits_w4a4.py',
                'ddaq-mixed':
                'configs/mixed/ddaq-mixed-w4a4_resnet18-w16_digits.py',
            }),
        # calibration-only methods are also run at 8 bits
        methods_8bit=('ptq', 'ptq-mse', 'zeroq')),
    'shapes-retinanet':
    dict(
        model='retinanet-r18-w16',
        fp_config='configs/fp_retinanet_r18-w16_shapes.py',
        fp_work_dir='work_dirs/fp_retinanet_r18-w16_shapes',
        ddaq_config='configs/ddaq_retinanet_r18-w16_shapes_w4a4.py',
        metrics=DETECTION_METRICS,
        tune_options=SHAPES_TUNE_OPTIONS,
        methods={
            **{m: None for m in DERIVED_METHODS},  # derived from ddaq
            'ddaq-mixed':
            'configs/mixed/ddaq-mixed-w4a4_retinanet_r18-w16_shapes.py',
        },
        methods_8bit=('ptq', 'zeroq', 'ddaq'),
        data='shapes'),
    'shapes-faster-rcnn':
    dict(
        model='faster-rcnn-r18-w16',
        fp_config='configs/fp_faster-rcnn_r18-w16_shapes.py',
        fp_work_dir='work_dirs/fp_faster-rcnn_r18-w16_shapes',
        ddaq_config='configs/ddaq_faster-rcnn_r18-w16_shapes_w4a4.py',
        metrics=DETECTION_METRICS,
        tune_options=SHAPES_TUNE_OPTIONS,
        methods={
            **{m: None for m in DERIVED_METHODS},
            'ddaq-mixed':
            'configs/mixed/ddaq-mixed-w4a4_faster-rcnn_r18-w16_shapes.py',
        },
        methods_8bit=('ptq', 'zeroq', 'ddaq'),
        data='shapes'),
    # trained like real mmdet detectors: pretrained backbone, frozen BN;
    # retinanet-p3: mmdet's RetinaNet FPN levels (P3-P7, from C3)
    **{f'frozenbn-{d}': frozenbn_suite(d)
       for d in ('retinanet', 'faster-rcnn', 'retinanet-p3')},
}
#: what each suite's ``data`` needs generated first
DATA = {'shapes': ensure_shapes, 'shapes-small': ensure_small_shapes}
METHOD_ORDER = ('fp', 'ptq', 'ptq-mse', 'zeroq', 'gdfq', 'genie', 'qat',
                'qdrop-real', 'ddaq-kd', 'ddaq', 'ddaq-no-d1', 'ddaq-no-d2',
                'ddaq-uniform', 'ddaq-mixed')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--suite', choices=sorted(SUITES) + ['speed'])
    p.add_argument('--config',
                   help='benchmark this DDAQ config instead of a suite '
                   '(baselines are derived from it)')
    p.add_argument('--checkpoint',
                   help='FP checkpoint of --config (its fp_checkpoint '
                   'by default)')
    p.add_argument('--metric', nargs='+',
                   help='NAME=KEY pairs of test metrics to record with '
                   '--config (default: from its test_evaluator)')
    p.add_argument('--out', help='JSON file of result rows (appended)')
    p.add_argument('--methods', nargs='+', choices=METHOD_ORDER,
                   help='methods to run (default: all of an accuracy '
                   'suite; ddaq for the speed suite)')
    p.add_argument('--bits', nargs='+', type=int, default=[8, 4, 3],
                   help='WxAx settings (8 only for the 8-bit methods)')
    p.add_argument('--a-bits', type=int, default=None,
                   help='activation bits of every run (default: as --bits; '
                   'W8A4 / W4A8 rows show which side breaks)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=None,
                   help='override max_iters of training methods')
    p.add_argument('--work-root', default='work_dirs/benchmark')
    p.add_argument('--split', choices=['test', 'tune'], default='test',
                   help='evaluate on the reported split (test) or on the '
                   'tuning split where recipes are chosen; rows record it')
    p.add_argument('--cfg-options', nargs='+', default=[],
                   help='KEY=VALUE overrides for every quantized run '
                   '(recipe search on the tune split)')
    p.add_argument('--tag', default='',
                   help='suffix of the method name in the rows (recipe '
                   'variants)')
    p.add_argument('--heads-a8', action='store_true',
                   help='keep the detection heads\' activations at 8 bits '
                   '(rows tagged "-heads-a8"): shows what quantizing the '
                   'heads costs')
    p.add_argument('--repeats', type=int, default=10,
                   help='timed repeats per measurement of the speed suite')
    p.add_argument('--random-weights', action='store_true',
                   help='speed suite: time randomly initialised models '
                   'instead of training the FP models first (same cost)')
    p.add_argument('--device', default='cpu',
                   help='device of the speed suite (cpu or cuda)')
    p.add_argument('--models', nargs='+', choices=sorted(SUITES),
                   default=['digits', 'shapes-retinanet',
                            'shapes-faster-rcnn'],
                   help='suites whose models the speed suite measures')
    p.add_argument('--seconds-to-quality', action='store_true',
                   help='speed suite: instead of the cost ratios, time the '
                   'default DDAQ W4A4 run of each --models suite to its '
                   'final metric, next to GDFQ-style\'s, in this process')
    p.add_argument('--report', nargs='+',
                   help='JSON file(s) to summarise; a later file adds only '
                   'the methods and bits the earlier ones lack (newest '
                   'first: --report NEW.json OLD.json)')
    p.add_argument('--markdown', help='write the summary table here')
    p.add_argument('--plot', help='write accuracy vs bits (PNG) here')
    p.add_argument('--plot-suite', help='suite to plot (default: the first)')
    p.add_argument('--plot-metric',
                   help='metric to plot (default: the first)')
    args = p.parse_args(argv)
    if args.suite and args.config:
        p.error('give either --suite or --config, not both')
    if args.checkpoint and not args.config:
        p.error('--checkpoint goes with --config')
    if args.methods is None:
        args.methods = ['ddaq'] if args.suite == 'speed' \
            else list(METHOD_ORDER)
    return args


def _load_rows(path):
    if path and osp.isfile(path):
        with open(path) as f:
            return json.load(f)
    return []


def report_rows(paths):
    """The rows of ``paths`` together: each later file adds only the
    (suite, split, method, bits) groups none of the earlier ones has, so a
    round's reruns replace the older rows of the same settings."""

    def key(r):
        return (r['suite'], r.get('split', 'test'), r['method'],
                r['w_bits'], r.get('a_bits', r['w_bits']))

    rows, seen = [], set()
    for path in paths:
        if not osp.isfile(path):
            raise SystemExit(f'--report: "{path}" does not exist')
        own = _load_rows(path)
        rows += [r for r in own if key(r) not in seen]
        seen |= {key(r) for r in own}
    return rows


def _save_rows(path, rows):
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


def _default_metrics(cfg):
    """Metrics to record for a user config, from its test evaluator."""
    evaluator = cfg.get('test_evaluator') or {}
    if isinstance(evaluator, (list, tuple)):
        evaluator = evaluator[0] if evaluator else {}
    kind = str(evaluator.get('type', '')).split('.')[-1]
    if kind == 'CocoMetric':
        return dict(DETECTION_METRICS)
    if kind == 'Accuracy':
        return dict(top1='accuracy/top1')
    raise SystemExit(f'cannot tell which metric of test_evaluator "{kind}" '
                     'to record; pass --metric NAME=KEY')


def suite_from_config(args):
    """A suite definition that benchmarks the user's DDAQ config."""
    cfg = load_config(osp.abspath(args.config))
    if args.metric:
        bad = [m for m in args.metric if '=' not in m]
        if bad:
            raise SystemExit(f'--metric takes NAME=KEY, got {bad}')
        metrics = dict(m.split('=', 1) for m in args.metric)
    else:
        metrics = _default_metrics(cfg)
    checkpoint = args.checkpoint or cfg.model.get('fp_checkpoint')
    if not checkpoint:
        raise SystemExit('no FP checkpoint: pass --checkpoint or set '
                         'model.fp_checkpoint in the config')
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise SystemExit(f'FP checkpoint "{checkpoint}" does not exist')
    name = osp.splitext(osp.basename(args.config))[0]
    return name, dict(
        model=name, ddaq_config=osp.abspath(args.config),
        fp_checkpoint=checkpoint, metrics=metrics,
        methods={m: None for m in DERIVED_METHODS},
        methods_8bit=('ptq', 'zeroq', 'ddaq'))


def prepare_suite(suite) -> str:
    """Generate a suite's data and train what it needs (its pretrained
    backbone, its FP model) unless done.

    Args:
        suite (dict): A suite of :data:`SUITES`.

    Returns:
        str: The FP checkpoint.
    """
    if suite.get('data'):
        DATA[suite['data']]()
    if suite.get('fp_checkpoint'):
        return suite['fp_checkpoint']
    if suite.get('pretrain'):
        ensure_patches()
        ensure_fp_checkpoint(*suite['pretrain'])
    return ensure_fp_checkpoint(suite['fp_config'], suite['fp_work_dir'])


def method_config(suite, method, options):
    """The config of ``method`` in ``suite`` with ``options`` merged."""
    path = suite['methods'][method]
    if path is not None:
        return load_config(path, options)
    return derive_method(load_config(suite['ddaq_config'], options), method)


SPEED_METRICS = ('iter_over_fp_step', 'recipe_iter_over_fp_step',
                 'fakequant_over_fp_forward', 'peak_mem_over_fp_step')


def run_speed(args):
    """Cost ratios of W4A4 runs per model of the accuracy suites: each
    ``--methods`` entry's config (``ddaq`` by default; ``ddaq-kd`` times
    the paper's recipe), ``--cfg-options`` change it, ``--tag`` names the
    variant."""
    from mmddaq.apis.cost import (cuda_peak_memory_ratio, peak_memory_ratio,
                                  speed_ratios)
    rows = _load_rows(args.out)
    on_cuda = args.device.startswith('cuda')
    for name, base in itertools.product(args.models, args.methods):
        suite = SUITES[name]
        method = base + args.tag
        if base not in suite['methods']:
            raise ValueError(f'the speed suite times a quantization method '
                             f'of suite {name}; "{base}" is not one')
        if any(r['suite'] == 'speed' and r['model'] == suite['model']
               and r['method'] == method
               and r.get('device', 'cpu') == args.device
               and r['metric'] in SPEED_METRICS for r in rows):
            continue
        # timing needs no trained weights (--random-weights skips training)
        fp_ckpt = None if args.random_weights else prepare_suite(suite)
        cfg = method_config(suite, base,
                            dict({'model.fp_checkpoint': fp_ckpt},
                                 **_parse_options(args.cfg_options)))
        if cfg.train_cfg.get('type', '').split('.')[-1] != \
                'DataFreeTrainLoop':
            raise ValueError(f'the speed suite times data-free iterations; '
                             f'"{base}" does not train with one')
        start = time.perf_counter()
        values = speed_ratios(cfg, repeats=args.repeats, device=args.device)
        values.update(
            cuda_peak_memory_ratio(cfg) if on_cuda else peak_memory_ratio(cfg))
        seconds = time.perf_counter() - start
        for metric in SPEED_METRICS:
            rows.append(
                dict(suite='speed', model=suite['model'], method=method,
                     w_bits=4, a_bits=4, seed=0, metric=metric,
                     value=round(values[metric], 4),
                     seconds=round(seconds, 2), device=args.device))
        print(f'[benchmark] speed {suite["model"]} {method}: ' + ', '.join(
            f'{k} = {v:.3f}' for k, v in values.items()), flush=True)
        _save_rows(args.out, rows)
    return rows


def run_seconds_to_quality(args):
    """Wall time of a whole DDAQ W4A4 run (training, post-training
    refinement) to its final metric, next to GDFQ-style's, one process."""
    rows = _load_rows(args.out)
    for name in args.models:
        suite = SUITES[name]
        fp_ckpt = prepare_suite(suite)
        metric, key = next(iter(suite['metrics'].items()))
        for method in ('ddaq', 'gdfq'):
            if any(r['suite'] == 'speed' and r['model'] == suite['model']
                   and r['method'] == method
                   and r['metric'] == 'seconds_to_quality' for r in rows):
                continue
            cfg = method_config(suite, method,
                                {'model.fp_checkpoint': fp_ckpt,
                                 'randomness.seed': 0})
            m = train_and_test(
                cfg, osp.join(args.work_root, 'seconds_to_quality', name,
                              method), method)
            rows.append(
                dict(suite='speed', model=suite['model'], method=method,
                     w_bits=4, a_bits=4, seed=0, metric='seconds_to_quality',
                     value=round(m['seconds'], 2), quality_metric=metric,
                     quality=m[key], seconds=round(m['seconds'], 2),
                     device=args.device))
            print(f'[benchmark] seconds to quality {suite["model"]} '
                  f'{method}: {m["seconds"]:.0f} s to {metric} = '
                  f'{m[key]:.4f}', flush=True)
            _save_rows(args.out, rows)
    return rows


def heads_at_a8(cfg) -> None:
    """Add a policy rule keeping the detector heads' activations at 8 bits
    (weights keep their bits)."""
    from mmddaq.registry import MODELS
    adapter = cfg.model.get('adapter') or {}
    cls = MODELS.get(adapter.get('type', ''))
    heads = tuple(getattr(cls, 'head_taps', ()))
    if not heads:
        raise SystemExit('--heads-a8 needs a detector config (its adapter '
                         'names the heads)')
    quantizer = cfg.model.quantizer
    quantizer['overrides'] = list(quantizer.get('overrides', [])) + [
        dict(pattern=f'{h}.*', a_bits=8) for h in heads]


def _done(rows, suite, method, bits, seed, split='test', a_bits=None):
    a_bits = bits if a_bits is None else a_bits
    return any(r['suite'] == suite and r['method'] == method
               and r['w_bits'] == bits and r['a_bits'] == a_bits
               and r['seed'] == seed and r.get('split', 'test') == split
               for r in rows)


def _parse_options(pairs):
    """``KEY=VALUE`` strings to a dict (values as Python literals)."""
    import ast
    options = {}
    for pair in pairs:
        if '=' not in pair:
            raise SystemExit(f'--cfg-options takes KEY=VALUE, got "{pair}"')
        key, value = pair.split('=', 1)
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _split_options(suite, split):
    if split == 'test':
        return {}
    if 'tune_options' not in suite:
        raise SystemExit('this suite has no tune split')
    return dict(suite['tune_options'])


#: Cost of a run copied into its rows when measured (see train_and_test).
COST_FIELDS = ('post_training_seconds', 'peak_memory_mb')


def result_rows(name, suite, method, bits, a_bits, seed, metrics, seconds,
                split='test') -> list:
    """One JSON row per metric of ``suite`` for a finished run, with its
    cost: ``seconds`` and, where measured, :data:`COST_FIELDS`."""
    rows = []
    cost = {k: round(metrics[k], 2) for k in COST_FIELDS
            if metrics.get(k) is not None}
    for metric, key in suite['metrics'].items():
        row = dict(suite=name, model=suite['model'], method=method,
                   w_bits=bits, a_bits=a_bits, seed=seed, metric=metric,
                   value=metrics[key], seconds=round(seconds, 2), **cost)
        if split != 'test':
            row['split'] = split
        rows.append(row)
    return rows


def run_suite(args):
    if args.suite == 'speed':
        if args.seconds_to_quality:
            return run_seconds_to_quality(args)
        return run_speed(args)
    if args.config:
        name, suite = suite_from_config(args)
    else:
        name, suite = args.suite, SUITES[args.suite]
    rows = _load_rows(args.out)
    fp_ckpt = prepare_suite(suite)

    split_opts = _split_options(suite, args.split)
    user_opts = _parse_options(args.cfg_options)

    def add(method, bits, seed, metrics, seconds, a_bits=None):
        a_bits = bits if a_bits is None else a_bits
        for row in result_rows(name, suite, method, bits, a_bits, seed,
                               metrics, seconds, args.split):
            rows.append(row)
            print(f'[benchmark] {name} {method} W{bits}A{a_bits} seed {seed}: '
                  f'{row["metric"]} = {row["value"]:.4f} ({seconds:.0f} s)',
                  flush=True)
        _save_rows(args.out, rows)

    if 'fp' in args.methods and not _done(rows, name, 'fp', 32, 0,
                                          args.split):
        # the FP model evaluated through the DDAQ config: same data, same
        # metric, same weights loading as every quantized method
        start = time.perf_counter()
        cfg = load_config(suite['ddaq_config'],
                          {'model.fp_checkpoint': fp_ckpt,
                           'model.eval_model': 'fp', **split_opts})
        runner = build_runner(cfg, osp.join(args.work_root, name, 'fp'),
                              'fp')
        m = run_test(runner)
        add('fp', 32, 0, m, time.perf_counter() - start)

    for method in args.methods:
        if method == 'fp' or method not in suite['methods']:
            continue
        for bits in args.bits:
            a_bits = args.a_bits or bits
            if bits == 8 and a_bits == 8 and \
                    method not in suite['methods_8bit']:
                print(f'[benchmark] {name}: {method} is not run at W8A8 '
                      f'(the suite runs {", ".join(suite["methods_8bit"])} '
                      'there)')
                continue
            label = method + args.tag + ('-heads-a8' if args.heads_a8
                                          else '')
            for seed in args.seeds:
                if _done(rows, name, label, bits, seed, args.split, a_bits):
                    continue
                opts = {
                    'model.fp_checkpoint': fp_ckpt,
                    'model.quantizer.w_bits': bits,
                    'model.quantizer.a_bits': a_bits,
                    'randomness.seed': seed,
                    **split_opts,
                }
                cfg = method_config(suite, method, opts)
                if user_opts:
                    cfg.merge_from_dict(user_opts)
                if args.heads_a8:
                    heads_at_a8(cfg)
                tc = cfg.train_cfg
                generator_only = cfg.model.get('generator') is not None \
                    and tc.warmup_iters == tc.max_iters
                if args.iters and (tc.warmup_iters < tc.max_iters
                                   or generator_only):
                    tc.max_iters = args.iters
                    tc.val_interval = args.iters
                    if generator_only:
                        tc.warmup_iters = args.iters
                run = f'{label}_w{bits}a{a_bits}_s{seed}' + (
                    '' if args.split == 'test' else f'_{args.split}')
                m = train_and_test(cfg, osp.join(args.work_root, name, run),
                                   run)
                add(label, bits, seed, m, m['seconds'], a_bits)

    return rows


def summarise(rows):
    """Group rows: (suite, method, bits, metric) -> (mean, std, n).

    ``bits`` are the weight bits; a row whose activation bits differ has
    them in its method name (``"ptq @A8"`` in the W4 column is W4A8).
    """
    groups = {}
    for r in rows:
        suite = r['suite'] if r.get('split', 'test') == 'test' \
            else f"{r['suite']} [{r['split']} split]"
        method = r['method']
        if r.get('a_bits', r['w_bits']) != r['w_bits']:
            method = f"{method} @A{r['a_bits']}"
        key = (suite, method, r['w_bits'], r['metric'])
        groups.setdefault(key, []).append(r['value'])
    out = {}
    for key, values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.
        out[key] = (statistics.mean(values), std, len(values))
    return out


def _fmt(metric, value):
    return f'{value:.2f}' if metric == 'top1' else f'{value:.3f}'


SPEED_GOALS = dict(iter_over_fp_step=2.5, recipe_iter_over_fp_step=2.5,
                   fakequant_over_fp_forward=1.3, peak_mem_over_fp_step=3.0)


def speed_table(rows) -> str:
    """One row per model, one column per cost ratio (goal in the header)."""
    def label(r):
        variant = '' if r['method'] == 'ddaq' else f", {r['method']}"
        return f"{r['model']} ({r.get('device', 'cpu')}{variant})"

    values = {(label(r), r['metric']): r['value'] for r in rows
              if r['suite'] == 'speed' and r['metric'] in SPEED_GOALS}
    models = list(dict.fromkeys(m for m, _ in values))
    header = ' | '.join(f'{m} (≤ {g})' for m, g in SPEED_GOALS.items())
    lines = ['\n### speed: DDAQ W4A4 cost ratios (median of repeats; '
             'goal in brackets)\n', f'| model | {header} |',
             '|---|' + '---|' * len(SPEED_GOALS)]
    for model in models:
        cells = []
        for metric, goal in SPEED_GOALS.items():
            v = values.get((model, metric))
            cells.append('' if v is None else
                         f'{v:.2f} ({"met" if v <= goal else "missed"})')
        lines.append(f'| {model} | ' + ' | '.join(cells) + ' |')
    timed = [r for r in rows if r['suite'] == 'speed'
             and r['metric'] == 'seconds_to_quality']
    if timed:
        lines += ['\n### speed: seconds to the final metric (one process)\n',
                  '| model | method | seconds | final metric |',
                  '|---|---|---|---|']
        lines += [f"| {r['model']} | {r['method']} | {r['value']:.0f} | "
                  f"{r['quality_metric']} {r['quality']:.4f} |"
                  for r in timed]
    return '\n'.join(lines)


def markdown_table(rows) -> str:
    summary = summarise(rows)
    suites = sorted({k[0] for k in summary})
    lines = []
    for suite in suites:
        if suite == 'speed':
            lines.append(speed_table(rows))
            continue
        metrics = sorted({k[3] for k in summary if k[0] == suite})
        for metric in metrics:
            if metric == 'iter_over_fp_step':
                continue
            bits = sorted({k[2] for k in summary
                           if k[0] == suite and k[3] == metric and k[2] != 32},
                          reverse=True)
            fp = summary.get((suite, 'fp', 32, metric))
            lines.append(f'\n### {suite}: {metric} (mean ± std over seeds, '
                         f'n = runs{", % of FP" if fp else ""})\n')
            if fp:
                lines.append(f'FP: **{_fmt(metric, fp[0])}**\n')
            lines.append('| method | ' + ' | '.join(
                f'W{b}A{b}' for b in bits) + ' |')
            lines.append('|---|' + '---|' * len(bits))
            extra = sorted({k[1] for k in summary if k[0] == suite}
                           - set(METHOD_ORDER))
            for method in list(METHOD_ORDER[1:]) + extra:
                cells = []
                for b in bits:
                    s = summary.get((suite, method, b, metric))
                    if s is None:
                        cells.append('')
                        continue
                    cell = (f'{_fmt(metric, s[0])} ± {_fmt(metric, s[1])} '
                            f'(n={s[2]}')
                    if fp and fp[0]:
                        cell += f', {100 * s[0] / fp[0]:.1f}%'
                    cells.append(cell + ')')
                if any(cells):
                    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
        for key, s in sorted(summary.items()):
            if key[0] == suite and key[3] == 'iter_over_fp_step':
                lines.append(f'\nDDAQ iteration / FP train step '
                             f'(W{key[2]}A{key[2]}): **{s[0]:.2f}x**\n')
    return '\n'.join(lines) + '\n'


def plot_accuracy_vs_bits(rows, path, suite=None, metric=None):
    """Plot ``metric`` of ``suite`` against bits, one line per method.

    The suite and metric default to those of the first row.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r['metric'] != 'iter_over_fp_step'
            and r['suite'] != 'speed']
    if not rows:
        raise SystemExit('no accuracy rows to plot')
    suite = suite or rows[0]['suite']
    metric = metric or rows[0]['metric']
    summary = {k: v for k, v in summarise(rows).items()
               if k[0] == suite and k[3] == metric}
    fig, ax = plt.subplots(figsize=(6, 4))
    # 20 colours: the methods outnumber the default cycle's ten
    ax.set_prop_cycle(color=plt.cm.tab20.colors)
    fp = [v for k, v in summary.items() if k[1] == 'fp']
    for method in METHOD_ORDER[1:]:
        pts = sorted((k[2], v) for k, v in summary.items() if k[1] == method)
        if not pts:
            continue
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                    yerr=[p[1][1] for p in pts], marker='o', capsize=3,
                    label=method)
    if fp:
        ax.axhline(fp[0][0], color='k', linestyle='--', label='fp')
    ax.set_title(suite)
    ax.set_xlabel('bits (weights = activations)')
    ax.set_ylabel('top-1 (%)' if metric == 'top1' else metric)
    ax.set_xticks(sorted({k[2] for k in summary if k[2] != 32}))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    if args.suite or args.config:
        if not args.out:
            raise SystemExit('--suite/--config needs --out FILE.json')
        run_suite(args)
    rows = report_rows(args.report) if args.report else _load_rows(
        args.out)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown_table(rows))
    if args.plot:
        plot_accuracy_vs_bits(rows, args.plot, args.plot_suite,
                              args.plot_metric)
    if not (args.suite or args.config or args.markdown or args.plot):
        print(markdown_table(rows))


if __name__ == '__main__':
    main()
