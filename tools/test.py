"""Evaluate a checkpoint with the config's test dataloader and metrics.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE.json]

For mmddaq quantization configs the checkpoint holds the whole algorithm
(FP and quantized model); the quantized model is evaluated unless
``--eval-model fp`` is given.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmengine.config import DictAction  # noqa: E402

from mmddaq.apis import config_from_args, run_test, runner_from_cfg  # noqa
from mmddaq.utils.dist import add_launcher_args, parse_launcher_args  # noqa


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save logs')
    parser.add_argument('--out', help='write the metrics to this JSON file')
    parser.add_argument(
        '--eval-model',
        choices=['quantized', 'fp'],
        default=None,
        help='for quantization configs: which model to evaluate')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='overrides')
    add_launcher_args(parser)
    return parse_launcher_args(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(
            f'checkpoint file "{args.checkpoint}" does not exist')
    cfg = config_from_args(args.config, args.cfg_options, args.work_dir,
                           args.launcher)
    is_ddaq = str(cfg.model.get('type', '')).endswith('DDAQ')
    if is_ddaq:
        # the checkpoint carries both models; no separate FP file needed
        cfg.model.fp_checkpoint = None
        if args.eval_model:
            cfg.model.eval_model = args.eval_model
    cfg.load_from = args.checkpoint
    runner = runner_from_cfg(cfg)
    metrics = run_test(runner)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2)
    return metrics


if __name__ == '__main__':
    main()
