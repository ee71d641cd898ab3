# Copyright (c) mmddaq contributors. All rights reserved.
from .atomic_io import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write_bytes,
                        atomic_write_text, remove_stale_temp_files)
from .checkpoint import (UnsafeCheckpointError,
                         install_safe_checkpoint_loading,
                         load_checkpoint_safe, load_from_local_safe,
                         register_safe_globals, state_dict_mismatch)
from .last_checkpoint import read_last_checkpoint, resume_hint
from .recorder import OutputRecorder, run_with_hooks

__all__ = [
    'UnsafeCheckpointError', 'register_safe_globals',
    'install_safe_checkpoint_loading', 'load_from_local_safe',
    'load_checkpoint_safe', 'ATOMIC_BACKEND', 'AtomicLocalBackend',
    'atomic_write_bytes', 'atomic_write_text', 'remove_stale_temp_files',
    'read_last_checkpoint', 'resume_hint', 'state_dict_mismatch',
    'OutputRecorder', 'run_with_hooks'
]
