# Copyright (c) mmddaq contributors. All rights reserved.
from .checkpoint import (UnsafeCheckpointError,
                         install_safe_checkpoint_loading,
                         load_checkpoint_safe, load_from_local_safe,
                         register_safe_globals)

__all__ = [
    'UnsafeCheckpointError', 'register_safe_globals',
    'install_safe_checkpoint_loading', 'load_from_local_safe',
    'load_checkpoint_safe'
]
