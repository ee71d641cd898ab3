from .runs import (build_runner, ensure_fp_checkpoint, load_config,
                   test_checkpoint, train_and_test)

__all__ = [
    'build_runner', 'ensure_fp_checkpoint', 'load_config', 'test_checkpoint',
    'train_and_test'
]
