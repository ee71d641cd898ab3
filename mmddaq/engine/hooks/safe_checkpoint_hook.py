# Copyright (c) mmddaq contributors. All rights reserved.
"""A ``CheckpointHook`` that never leaves a broken or non-finite "latest"."""
import os.path as osp
from typing import Iterator, List, Optional, Tuple

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from mmddaq.registry import HOOKS
from mmddaq.utils.atomic_io import (ATOMIC_BACKEND, atomic_write_text,
                                    remove_stale_temp_files)
from mmddaq.utils.last_checkpoint import (LAST_CHECKPOINT,
                                          read_last_checkpoint, resume_hint)
from mmddaq.utils.checkpoint import state_dict_mismatch
from .utils import algorithm_of


def _tensors(obj, prefix: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield ``(dotted path, tensor)`` for every tensor nested in ``obj``."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _tensors(value, f'{prefix}.{key}')
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f'{prefix}.{i}')


def first_non_finite(runner) -> Optional[str]:
    """Name the first model parameter or optimizer state that is not finite.

    Args:
        runner (Runner): The runner whose model and optimizers are checked.

    Returns:
        str, optional: Where a NaN/Inf was found, or None if all is finite.
    """
    model = algorithm_of(runner)
    for name, param in model.named_parameters():
        if param.is_floating_point() and not torch.isfinite(param).all():
            return f'model parameter "{name}"'
    optim = getattr(runner, 'optim_wrapper', None)
    if optim is not None and hasattr(optim, 'state_dict'):
        for name, value in _tensors(optim.state_dict(), 'optimizer'):
            if value.is_floating_point() and not torch.isfinite(value).all():
                return f'optimizer state "{name}"'
    return None


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """MMEngine's ``CheckpointHook`` with crash-safe saving.

    It takes every argument of ``CheckpointHook`` and differs in three ways:

    1. **Atomic writes.** For local folders (the default unless
       ``backend_args`` / ``file_client_args`` choose another backend),
       checkpoints and ``last_checkpoint`` are written through
       :class:`~mmddaq.utils.AtomicLocalBackend`: temporary file, fsync,
       rename. A crash or kill while saving keeps the previous file of the
       same name, and ``last_checkpoint`` only ever names a complete file.
    2. **Safe order.** ``last_checkpoint`` is updated after the new
       checkpoint is complete, and checkpoints beyond ``max_keep_ckpts``
       are deleted only after that (MMEngine deletes them first), so the
       checkpoint ``last_checkpoint`` names always exists.
    3. **No non-finite checkpoints.** Before saving, the model's
       parameters and the optimizer states are checked; a NaN/Inf stops
       the run with a ``FloatingPointError`` that names the tensor and the
       last good checkpoint, and nothing is written.

    It also refuses to **resume** from a checkpoint whose model does not
    match the config (missing/unexpected keys or other shapes), which
    MMEngine only warns about before training on with partly random
    weights; the error comes before anything is loaded or trained.
    Temporary files left by an interrupted save are removed when training
    starts.

    Args:
        check_finite (bool): Refuse to save non-finite states. Defaults to
            True.
        check_resume (bool): Refuse to resume from a checkpoint that does
            not match the model. Defaults to True.
        **kwargs: Arguments of ``mmengine.hooks.CheckpointHook``.
    """

    def __init__(self,
                 check_finite: bool = True,
                 check_resume: bool = True,
                 **kwargs) -> None:
        out_dir = kwargs.get('out_dir')
        local = out_dir is None or '://' not in str(out_dir)
        if local and kwargs.get('backend_args') is None and \
                kwargs.get('file_client_args') is None:
            kwargs['backend_args'] = dict(backend=ATOMIC_BACKEND)
        super().__init__(**kwargs)
        self.check_finite = check_finite
        self.check_resume = check_resume

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Refuse to resume from a checkpoint of another model."""
        if not self.check_resume or not getattr(runner, '_resume', False):
            return
        state = checkpoint.get('state_dict') \
            if isinstance(checkpoint, dict) else None
        source = getattr(runner, '_load_from', None) or \
            read_last_checkpoint(runner.work_dir) or runner.work_dir
        if not isinstance(state, dict):
            raise ValueError(f'Cannot resume from "{source}": it holds no '
                             'state_dict.')
        problems = state_dict_mismatch(algorithm_of(runner), state)
        if problems:
            raise ValueError(
                f'Cannot resume from "{source}": it does not match the '
                'model of this config (' + '; '.join(problems) + '). Resume '
                'with the config it was saved with, or start a new run in '
                'another work dir. Nothing was loaded.')

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if not is_main_process() or '://' in str(self.out_dir):
            return
        stale = []
        if osp.isdir(self.out_dir):
            stale += remove_stale_temp_files(self.out_dir, '*.pth')
        stale += remove_stale_temp_files(runner.work_dir, LAST_CHECKPOINT)
        for path in stale:
            runner.logger.info(
                f'Removed a partial file of an interrupted save: {path}')

    def _refuse_non_finite(self, runner) -> None:
        """Raise before saving if the state holds a NaN or Inf."""
        if not self.check_finite:
            return
        where = first_non_finite(runner)
        if where is not None:
            raise FloatingPointError(
                f'Not saving a checkpoint at iteration {runner.iter + 1}: '
                f'{where} holds NaN/Inf, so training diverged. '
                f'{resume_hint(runner.work_dir)} Lower the learning rates '
                'or loss weights before resuming.')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        self._refuse_non_finite(runner)

        # Decide which old checkpoint goes, but delete it only once the new
        # one is complete and ``last_checkpoint`` names it.
        hub = runner.message_hub
        previous = dict(
            keep=list(getattr(self, 'keep_ckpt_ids', ())),
            hub_keep=hub.runtime_info.get('keep_ckpt_ids'),
            last=self.last_ckpt,
            hub_last=hub.runtime_info.get('last_ckpt'))
        outdated: List[int] = []
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir,
                                                     ckpt_filename)
        hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(
                self.out_dir,
                ckpt_filename,
                self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler,
                meta=meta,
                by_epoch=self.by_epoch,
                backend_args=self.backend_args,
                **self.args)
        except BaseException:
            self._roll_back(hub, previous)
            raise

        if not is_main_process():
            return
        atomic_write_text(
            osp.join(runner.work_dir, LAST_CHECKPOINT), self.last_ckpt)
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir,
                                               self.filename_tmpl.format(old))
            if path == self.last_ckpt:
                continue
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)

    def _roll_back(self, hub, previous: dict) -> None:
        """Undo the bookkeeping of a save that failed."""
        if hasattr(self, 'keep_ckpt_ids'):
            self.keep_ckpt_ids.clear()
            self.keep_ckpt_ids.extend(previous['keep'])
        self.last_ckpt = previous['last']
        for key, hub_key in (('hub_keep', 'keep_ckpt_ids'),
                             ('hub_last', 'last_ckpt')):
            if previous[key] is None:
                hub.runtime_info.pop(hub_key, None)
            else:
                hub.update_info(hub_key, previous[key])
