"""Run configs in-process: what the demo and the benchmarks share."""
import os.path as osp
import time
from typing import Dict, Optional

import torch
from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from mmddaq.utils.paths import check_work_dir
from .metrics import run_test

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_config(config: str, options: Optional[dict] = None) -> Config:
    """Read a config (path relative to the repository root or absolute).

    Args:
        config (str): Config path.
        options (dict, optional): ``--cfg-options`` style overrides.

    Returns:
        Config: The merged config.
    """
    path = config if osp.isabs(config) else osp.join(REPO_ROOT, config)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file "{path}" does not exist')
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    return cfg


def config_from_args(config: str,
                     cfg_options: Optional[dict] = None,
                     work_dir: Optional[str] = None,
                     launcher: str = 'none') -> Config:
    """Load a config the way the command-line tools do.

    The work dir defaults to ``./work_dirs/<config name>`` like mmdet's and
    mmpretrain's tools.

    Args:
        config (str): Config path.
        cfg_options (dict, optional): ``--cfg-options`` overrides.
        work_dir (str, optional): ``--work-dir``.
        launcher (str): ``--launcher``.

    Returns:
        Config: The config, ready for a runner.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file "{config}" does not exist')
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config))[0])
    return cfg


def runner_from_cfg(cfg: Config) -> Runner:
    """Build the runner a config asks for (``runner_type``) or MMEngine's."""
    check_work_dir(cfg.work_dir)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def build_runner(cfg: Config, work_dir: str, name: str) -> Runner:
    """Build the config's runner with a fresh work dir and experiment name."""
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.experiment_name = f'{name}_{time.strftime("%Y%m%d_%H%M%S")}' \
        f'_{int(time.time() * 1e6) % 1000000}'
    if isinstance(cfg.get('visualizer'), dict):
        # a named visualizer is a process-wide singleton: without a name of
        # its own, every later run in this process would save its pictures
        # into the first run's work dir
        cfg.visualizer = dict(cfg.visualizer, name=cfg.experiment_name)
    return runner_from_cfg(cfg)


def train_and_test(cfg: Config, work_dir: str,
                   name: str) -> Dict[str, float]:
    """Train with ``cfg`` then evaluate with its test loop.

    Returns:
        dict[str, float]: Test metrics, ``seconds`` (training time,
        post-training included), ``post_training_seconds`` (the config's
        :class:`~mmddaq.engine.hooks.PostTrainingHook`, if it has one) and
        ``peak_memory_mb`` (peak of training and post-training: CUDA
        allocated memory, or the process's resident set on CPU; absent
        where it cannot be read).
    """
    from .cost import PeakMemory
    runner = build_runner(cfg, work_dir, name)
    start = time.perf_counter()
    with PeakMemory('cuda' if torch.cuda.is_available() else 'cpu') as peak:
        runner.train()
    seconds = time.perf_counter() - start
    post = runner.message_hub.get_info('post_training_seconds')
    metrics = run_test(runner)
    metrics['seconds'] = seconds
    if post is not None:
        metrics['post_training_seconds'] = post
    if peak.megabytes is not None:
        metrics['peak_memory_mb'] = peak.megabytes
    return metrics


def test_checkpoint(cfg: Config, checkpoint: str, work_dir: str,
                    name: str) -> Dict[str, float]:
    """Evaluate ``checkpoint`` with the test loop of ``cfg``."""
    cfg = cfg.copy()
    cfg.load_from = checkpoint
    runner = build_runner(cfg, work_dir, name)
    return run_test(runner)


def ensure_fp_checkpoint(fp_config: str, work_dir: str, logger=print) -> str:
    """Train the full-precision model of ``fp_config`` unless it exists.

    Args:
        fp_config (str): Config of the FP model.
        work_dir (str): Where it is (or will be) trained.
        logger (Callable): Where progress messages go.

    Returns:
        str: Path of the FP checkpoint (``last_checkpoint`` of the run).
    """
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            path = f.read().strip()
        if osp.isfile(path):
            return path
    logger(f'Training the full-precision model ({fp_config}) into '
           f'{work_dir}; this happens once.')
    runner = build_runner(load_config(fp_config), work_dir, 'fp')
    runner.train()
    with open(pointer) as f:
        return f.read().strip()
