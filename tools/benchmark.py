"""Accuracy and cost benchmarks of mmddaq against its baselines.

    python tools/benchmark.py --suite digits --out docs/benchmarks/digits.json
    python tools/benchmark.py --report docs/benchmarks/digits.json \
        --markdown docs/benchmarks.md

Each result is one JSON row::

    {"suite", "model", "method", "w_bits", "a_bits", "seed", "metric",
     "value", "seconds"}

Rows are appended to ``--out`` as soon as a run ends, so a long benchmark
can be interrupted and continued (runs already in the file are skipped).
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmddaq.apis import (ensure_fp_checkpoint, load_config,  # noqa: E402
                         test_checkpoint, train_and_test)

SUITES = {
    'digits':
    dict(
        model='resnet18-w16',
        fp_config='configs/fp_resnet18-w16_digits.py',
        fp_work_dir='work_dirs/fp_resnet18-w16_digits',
        metric='accuracy/top1',
        metric_name='top1',
        methods=dict(
            ptq='configs/baselines/ptq_resnet18-w16_digits_w4a4.py',
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
            }),
        # calibration-only methods are also run at 8 bits
        ptq_methods=('ptq', 'zeroq')),
}
METHOD_ORDER = ('fp', 'ptq', 'zeroq', 'gdfq', 'qat', 'ddaq', 'ddaq-no-d1',
                'ddaq-no-d2', 'ddaq-uniform')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--suite', choices=sorted(SUITES))
    p.add_argument('--out', help='JSON file of result rows (appended)')
    p.add_argument('--methods', nargs='+', choices=METHOD_ORDER,
                   default=list(METHOD_ORDER))
    p.add_argument('--bits', nargs='+', type=int, default=[8, 4, 3],
                   help='WxAx settings (8 only for calibration methods)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--iters', type=int, default=None,
                   help='override max_iters of training methods')
    p.add_argument('--work-root', default='work_dirs/benchmark')
    p.add_argument('--cost', action='store_true',
                   help='also measure iter_over_fp_step of DDAQ')
    p.add_argument('--report', help='JSON file to summarise')
    p.add_argument('--markdown', help='write the summary table here')
    p.add_argument('--plot', help='write accuracy vs bits (PNG) here')
    return p.parse_args(argv)


def _load_rows(path):
    if path and osp.isfile(path):
        with open(path) as f:
            return json.load(f)
    return []


def _save_rows(path, rows):
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(rows, f, indent=1)
    os.replace(tmp, path)


def _done(rows, suite, method, bits, seed):
    return any(r['suite'] == suite and r['method'] == method
               and r['w_bits'] == bits and r['seed'] == seed for r in rows)


def run_suite(args):
    suite = SUITES[args.suite]
    rows = _load_rows(args.out)
    fp_ckpt = ensure_fp_checkpoint(suite['fp_config'], suite['fp_work_dir'])

    def add(method, bits, seed, value, seconds, metric=None):
        rows.append(
            dict(suite=args.suite, model=suite['model'], method=method,
                 w_bits=bits, a_bits=bits, seed=seed,
                 metric=metric or suite['metric_name'], value=value,
                 seconds=round(seconds, 2)))
        _save_rows(args.out, rows)
        print(f'[benchmark] {method} W{bits}A{bits} seed {seed}: '
              f'{metric or suite["metric_name"]} = {value:.4f} '
              f'({seconds:.0f} s)', flush=True)

    if 'fp' in args.methods and not _done(rows, args.suite, 'fp', 32, 0):
        start = time.perf_counter()
        m = test_checkpoint(
            load_config(suite['fp_config']), fp_ckpt,
            osp.join(args.work_root, args.suite, 'fp'), 'fp')
        add('fp', 32, 0, m[suite['metric']], time.perf_counter() - start)

    for method in args.methods:
        if method == 'fp':
            continue
        for bits in args.bits:
            if bits == 8 and method not in suite['ptq_methods']:
                continue
            for seed in args.seeds:
                if _done(rows, args.suite, method, bits, seed):
                    continue
                opts = {
                    'model.fp_checkpoint': fp_ckpt,
                    'model.quantizer.w_bits': bits,
                    'model.quantizer.a_bits': bits,
                    'randomness.seed': seed,
                }
                cfg = load_config(suite['methods'][method], opts)
                trains = cfg.train_cfg.warmup_iters < cfg.train_cfg.max_iters
                if args.iters and trains:
                    cfg.train_cfg.max_iters = args.iters
                    cfg.train_cfg.val_interval = args.iters
                name = f'{method}_w{bits}a{bits}_s{seed}'
                m = train_and_test(
                    cfg, osp.join(args.work_root, args.suite, name), name)
                add(method, bits, seed, m[suite['metric']], m['seconds'])

    if args.cost:
        from mmddaq.apis.cost import ddaq_iter_over_fp_step
        cfg = load_config(suite['methods']['ddaq'],
                          {'model.fp_checkpoint': fp_ckpt})
        ratio, seconds = ddaq_iter_over_fp_step(cfg)
        add('ddaq', 4, 0, ratio, seconds, metric='iter_over_fp_step')
    return rows


def summarise(rows):
    """Group rows: (suite, method, bits, metric) -> (mean, std, n)."""
    groups = {}
    for r in rows:
        key = (r['suite'], r['method'], r['w_bits'], r['metric'])
        groups.setdefault(key, []).append(r['value'])
    out = {}
    for key, values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.
        out[key] = (statistics.mean(values), std, len(values))
    return out


def markdown_table(rows) -> str:
    summary = summarise(rows)
    suites = sorted({k[0] for k in summary})
    lines = []
    for suite in suites:
        metrics = sorted({k[3] for k in summary if k[0] == suite})
        for metric in metrics:
            if metric == 'iter_over_fp_step':
                continue
            bits = sorted({k[2] for k in summary
                           if k[0] == suite and k[3] == metric and k[2] != 32},
                          reverse=True)
            fp = summary.get((suite, 'fp', 32, metric))
            lines.append(f'\n### {suite}: {metric} (mean ± std over seeds, '
                         f'n = runs)\n')
            if fp:
                lines.append(f'FP: **{fp[0]:.2f}**\n')
            lines.append('| method | ' + ' | '.join(
                f'W{b}A{b}' for b in bits) + ' |')
            lines.append('|---|' + '---|' * len(bits))
            for method in METHOD_ORDER[1:]:
                cells = []
                for b in bits:
                    s = summary.get((suite, method, b, metric))
                    cells.append('' if s is None else
                                 f'{s[0]:.2f} ± {s[1]:.2f} (n={s[2]})')
                if any(cells):
                    lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
        for key, s in sorted(summary.items()):
            if key[0] == suite and key[3] == 'iter_over_fp_step':
                lines.append(f'\nDDAQ iteration / FP train step '
                             f'(W{key[2]}A{key[2]}): **{s[0]:.2f}x**\n')
    return '\n'.join(lines) + '\n'


def plot_accuracy_vs_bits(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    summary = summarise(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    fp = [v for k, v in summary.items() if k[1] == 'fp']
    for method in METHOD_ORDER[1:]:
        pts = sorted((k[2], v) for k, v in summary.items()
                     if k[1] == method and k[3] != 'iter_over_fp_step')
        if not pts:
            continue
        ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                    yerr=[p[1][1] for p in pts], marker='o', capsize=3,
                    label=method)
    if fp:
        ax.axhline(fp[0][0], color='k', linestyle='--', label='fp')
    ax.set_xlabel('bits (weights = activations)')
    ax.set_ylabel('top-1 (%)')
    ax.set_xticks(sorted({k[2] for k in summary if k[2] != 32}))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    if args.suite:
        if not args.out:
            raise SystemExit('--suite needs --out FILE.json')
        run_suite(args)
    rows = _load_rows(args.report or args.out)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(markdown_table(rows))
    if args.plot:
        plot_accuracy_vs_bits(rows, args.plot)
    if not args.suite and not args.markdown and not args.plot:
        print(markdown_table(rows))


if __name__ == '__main__':
    main()
