from .metrics import complete_metrics, run_test
from .runs import (build_runner, config_from_args, ensure_fp_checkpoint,
                   load_config, runner_from_cfg, test_checkpoint,
                   train_and_test)

__all__ = [
    'build_runner', 'config_from_args', 'ensure_fp_checkpoint', 'load_config',
    'runner_from_cfg', 'test_checkpoint', 'train_and_test',
    'complete_metrics', 'run_test'
]
