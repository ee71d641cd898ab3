"""Compare post-training recipes (pool, ranges, reconstruction) of a
benchmark suite's method on one trained generator, in one process.

For each seed the method's config is trained once with its
``PostTrainingHook`` left out; then, for every variant, the quantized model
is put back as training left it, the config's ``PostTrainingHook`` runs with
the variant's overrides (same random seed, so variants that draw the same
pool draw the same samples) and the model is evaluated. Training a
generator is most of a run's time: a recipe search over what happens after
it costs one training per seed instead of one per variant.

    python tools/post_training_ab.py --suite frozenbn-retinanet --split tune \\
        --seeds 0 1 --out docs/benchmarks/pool_ab.json \\
        --variant base '{}' \\
        --variant n1024 "{'num_samples': 1024}" \\
        --variant rec600 "{'reconstruction': {'iters': 600}}"

A variant is a dict of ``PostTrainingHook`` arguments. A dict value without
a ``type`` (e.g. ``reconstruction``'s ``iters``) updates the config's
value; any other value replaces it (so a stage the config lacks, e.g.
``output_tuning``, needs its ``type``). Rows are appended to ``--out`` in
``tools/benchmark.py``'s format (method ``<method>-<variant>``; the variant
``base`` keeps the method's name; ``--tag`` is appended to the method's
name), finished rows are skipped, and
``seconds`` is the training plus that variant's post-training time.
Summarise with ``python tools/benchmark.py --report OUT``.
"""
import argparse
import ast
import copy
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import benchmark as bench  # noqa: E402
from mmengine.runner import set_random_seed  # noqa: E402

from mmddaq.apis import build_runner  # noqa: E402
from mmddaq.apis.metrics import run_test  # noqa: E402
from mmddaq.engine.hooks.utils import algorithm_of  # noqa: E402
from mmddaq.registry import HOOKS  # noqa: E402

POST_TRAINING = 'PostTrainingHook'
BASE = 'base'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--suite', required=True,
                        choices=sorted(k for k in bench.SUITES
                                       if k != 'speed'))
    parser.add_argument('--method', default='ddaq',
                        help='a method of the suite that ends with a '
                        'PostTrainingHook (ddaq, genie, qdrop-real, ...)')
    parser.add_argument('--variant', nargs=2, action='append',
                        metavar=('NAME', 'DICT'), required=True,
                        help='PostTrainingHook overrides, a Python dict')
    parser.add_argument('--bits', type=int, default=4)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--split', choices=['test', 'tune'], default='tune')
    parser.add_argument('--out', required=True)
    parser.add_argument('--work-root', default='work_dirs/post_training_ab')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='KEY=VALUE overrides of the trained config')
    parser.add_argument('--tag', default='',
                        help='suffix of the method name in the rows (e.g. '
                        '"-dis0.3" for a run with --cfg-options)')
    args = parser.parse_args(argv)
    args.variants = {}
    for name, text in args.variant:
        if name in args.variants:
            parser.error(f'variant "{name}" given twice')
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as e:
            parser.error(f'variant "{name}": not a Python dict: {e}')
        if not isinstance(value, dict):
            parser.error(f'variant "{name}": not a dict: {text}')
        args.variants[name] = value
    return args


def apply_variant(hook: dict, overrides: dict) -> dict:
    """``hook`` with ``overrides``: dicts without a ``type`` update the
    hook's dict of that key, everything else replaces it."""
    hook = copy.deepcopy(hook)
    for key, value in overrides.items():
        if isinstance(value, dict) and 'type' not in value and \
                isinstance(hook.get(key), dict):
            hook[key] = dict(hook[key], **copy.deepcopy(value))
        else:
            hook[key] = copy.deepcopy(value)
    return hook


def split_post_training(cfg) -> dict:
    """Remove the config's ``PostTrainingHook`` and return it."""
    hooks = list(cfg.get('custom_hooks') or [])
    posts = [h for h in hooks
             if h.get('type', '').split('.')[-1] == POST_TRAINING]
    if len(posts) != 1:
        raise SystemExit(f'the method\'s config has {len(posts)} '
                         f'{POST_TRAINING}s; this tool needs exactly one')
    cfg.custom_hooks = [h for h in hooks if h is not posts[0]]
    return copy.deepcopy(posts[0])


def label(method: str, variant: str) -> str:
    return method if variant == BASE else f'{method}-{variant}'


def run(args) -> list:
    suite = bench.SUITES[args.suite]
    rows = bench._load_rows(args.out)
    fp_ckpt = bench.prepare_suite(suite)
    user_opts = bench._parse_options(args.cfg_options)
    for seed in args.seeds:
        method = args.method + args.tag
        todo = [v for v in args.variants
                if not bench._done(rows, args.suite, label(method, v),
                                   args.bits, seed, args.split)]
        if not todo:
            continue
        opts = {
            'model.fp_checkpoint': fp_ckpt,
            'model.quantizer.w_bits': args.bits,
            'model.quantizer.a_bits': args.bits,
            'randomness.seed': seed,
            **bench._split_options(suite, args.split),
        }
        cfg = bench.method_config(suite, args.method, opts)
        if user_opts:
            cfg.merge_from_dict(user_opts)
        post = split_post_training(cfg)
        name = f'{method}_w{args.bits}a{args.bits}_s{seed}_{args.split}'
        runner = build_runner(cfg, osp.join(args.work_root, args.suite, name),
                              name)
        start = time.perf_counter()
        runner.train()
        trained = time.perf_counter() - start
        algorithm = algorithm_of(runner)
        # the recorders' hooks are closures: a copy keeps feeding them
        snapshot = copy.deepcopy(algorithm.quantized)
        # a variant may change the FP model too (equalisation keeps its
        # function but rescales it): each starts from the trained one
        fp_state = copy.deepcopy(algorithm.fp_model.state_dict())
        for variant in todo:
            algorithm.quantized = copy.deepcopy(snapshot)
            algorithm.fp_model.load_state_dict(fp_state)
            set_random_seed(seed)
            hook = HOOKS.build(apply_variant(post, args.variants[variant]))
            hook.after_train(runner)
            # the hook times itself (pool, ranges, reconstruction)
            post_seconds = runner.message_hub.get_info(
                'post_training_seconds')
            seconds = trained + post_seconds
            metrics = dict(run_test(runner),
                           post_training_seconds=post_seconds)
            row_method = label(method, variant)
            for row in bench.result_rows(args.suite, suite, row_method,
                                         args.bits, args.bits, seed, metrics,
                                         seconds, args.split):
                rows.append(row)
                print(f'[post-training A/B] {args.suite} {row_method} seed '
                      f'{seed}: {row["metric"]} = {row["value"]:.4f} '
                      f'({seconds:.0f} s)', flush=True)
            bench._save_rows(args.out, rows)
    return rows


def main(argv=None):
    run(parse_args(argv))


if __name__ == '__main__':
    main()
