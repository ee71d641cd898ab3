"""Train a model from a config, as the mmpretrain/mmdet train scripts do.

Works for ordinary OpenMMLab configs (e.g. training the full-precision
model) and for mmddaq's data-free quantization configs (``runner_type``
``mmddaq.DataFreeRunner``)::

    python tools/train.py configs/ddaq_resnet18-w16_digits_w4a4.py
    torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch
    bash tools/dist_train.sh CONFIG 2            # the same
    bash tools/slurm_train.sh PARTITION JOB CONFIG WORK_DIR   # slurm

Without a GPU, ``--launcher pytorch`` trains on CPUs over ``gloo``.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401  (registers modules, safe checkpoints)
from mmengine.config import Config, DictAction  # noqa: E402

from mmddaq.apis import config_from_args, runner_from_cfg  # noqa: E402
from mmddaq.utils.dist import (add_launcher_args,  # noqa: E402
                               init_dist_without_gpu, parse_launcher_args)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train (or quantize) a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest one in '
        'the work dir if no path is given')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value')
    add_launcher_args(parser)
    return parse_launcher_args(parser, argv)


def build_cfg(args) -> Config:
    """Load the config and apply the command-line options."""
    cfg = config_from_args(args.config, args.cfg_options, args.work_dir,
                           args.launcher)
    if args.amp:
        for key, wrapper in _optim_wrappers(cfg):
            wrapper['type'] = 'AmpOptimWrapper'
            wrapper.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def _optim_wrappers(cfg):
    ow = cfg.get('optim_wrapper')
    if ow is None:
        return []
    if 'optimizer' in ow:
        return [('optim_wrapper', ow)]
    return [(k, v) for k, v in ow.items() if isinstance(v, dict)]


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)
    init_dist_without_gpu(args.launcher,
                          cfg.get('env_cfg', {}).get('dist_cfg'))
    runner = runner_from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
