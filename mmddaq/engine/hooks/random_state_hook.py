# Copyright (c) mmddaq contributors. All rights reserved.
"""Save the random state in checkpoints so a resumed run repeats exactly."""
import random
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook

from mmddaq.registry import HOOKS

__all__ = ['RandomStateHook', 'capture_random_state', 'restore_random_state']

CHECKPOINT_KEY = 'random_state'


def capture_random_state() -> dict:
    """The state of Python's, numpy's and torch's global random generators.

    Returns:
        dict: Plain containers and tensors only, so the checkpoint still
        loads with ``torch.load(..., weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(
            name=name,
            keys=torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict) -> None:
    """Put back a state made by :func:`capture_random_state`.

    Args:
        state (dict): The captured state.
    """
    random.setstate(_as_tuple(state['python']))
    np_state = state['numpy']
    np.random.set_state(
        (np_state['name'], np_state['keys'].numpy().astype(np.uint32),
         np_state['pos'], np_state['has_gauss'],
         np_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    cuda = state.get('cuda')
    if cuda is not None and torch.cuda.is_available() and \
            len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _as_tuple(obj):
    """Turn lists back into tuples (``random.setstate`` needs tuples)."""
    if isinstance(obj, (list, tuple)):
        return tuple(_as_tuple(v) for v in obj)
    return obj


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Make a resumed run draw the same random numbers as an uninterrupted one.

    MMEngine seeds the random generators once when the runner is built but
    does not save their state, so after ``--resume`` the generator's noise
    (and anything else random) differs from the run that was interrupted.
    This hook stores the state of Python's, numpy's and torch's (and CUDA's)
    generators in every checkpoint (key ``random_state``, one entry per
    rank) and puts it back when training resumes from that checkpoint;
    loading a checkpoint with ``load_from`` alone (a new run) leaves the
    seeding alone. Validation during training runs with its own random
    numbers and leaves the training ones untouched, so a run resumed from
    a checkpoint taken just before a validation repeats the same noise.

    Its priority (80) puts it after every hook that may draw random numbers
    after an iteration (e.g. ``GeneratedSamplesHook``, ``LOW``) and before
    the checkpoint hook (``VERY_LOW``). In distributed runs each rank's
    state is gathered after every iteration (a small collective), because
    only rank 0 writes the checkpoint; a run resumed with a different
    number of processes keeps MMEngine's seeding and says so.
    """

    priority = 80

    def __init__(self) -> None:
        self._gathered: Optional[tuple] = None
        self._to_restore: Optional[tuple] = None
        self._val_state: Optional[dict] = None

    # -- saving --------------------------------------------------------
    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if get_world_size() > 1:
            self._gathered = (runner.iter,
                              all_gather_object(capture_random_state()))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if get_world_size() > 1:
            if self._gathered is None or self._gathered[0] != runner.iter:
                runner.logger.warning(
                    'The random state of every rank is only known right '
                    'after a training iteration; this checkpoint holds none.')
                return
            states: List[dict] = self._gathered[1]
        else:
            states = [capture_random_state()]
        checkpoint[CHECKPOINT_KEY] = states

    # -- resuming ------------------------------------------------------
    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = checkpoint.get(CHECKPOINT_KEY)
        meta = checkpoint.get('meta') or {}
        self._to_restore = None
        if states:
            self._to_restore = (meta.get('iter'), states)

    def before_train(self, runner) -> None:
        if self._to_restore is None:
            return
        saved_iter, states = self._to_restore
        self._to_restore = None
        if runner.iter == 0 or runner.iter != saved_iter:
            return  # weights loaded for a new run, not a resumed one
        if len(states) != get_world_size():
            runner.logger.warning(
                f'The checkpoint holds the random state of {len(states)} '
                f'processes but this run has {get_world_size()}; the '
                'resumed run keeps the seeding of the config and will not '
                'repeat the random numbers of the interrupted one.')
            return
        restore_random_state(states[get_rank()])
        runner.logger.info(
            f'Random state restored from the checkpoint (iteration '
            f'{saved_iter}).')

    # -- validation does not consume training randomness ----------------
    def before_val(self, runner) -> None:
        self._val_state = capture_random_state()

    def after_val(self, runner) -> None:
        if self._val_state is not None:
            restore_random_state(self._val_state)
            self._val_state = None
