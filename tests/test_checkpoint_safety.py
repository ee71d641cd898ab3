# Copyright (c) mmddaq contributors. All rights reserved.
"""Tests for ``mmddaq.utils.checkpoint`` (safe MMEngine checkpoint loading)."""
import functools
import io
import os
import pickle
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader
from torch.utils.data import Dataset

import mmddaq.utils.checkpoint as ckpt_utils
from mmddaq.utils.checkpoint import (UnsafeCheckpointError,
                                     install_safe_checkpoint_loading,
                                     load_checkpoint_safe,
                                     load_from_local_safe,
                                     register_safe_globals)

install_safe_checkpoint_loading()


class ToyModel(BaseModel):
    """A linear regression model."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs).squeeze(-1)
        if mode == 'loss':
            return dict(loss=((out - labels)**2).mean())
        return out


class ToyDataset(Dataset):
    """Eight random samples; its metainfo holds numpy values."""

    metainfo = dict(
        classes=('a', 'b'), mean=np.array([0.5, 0.5], dtype=np.float32))

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 2, generator=gen)
        self.y = torch.randn(8, generator=gen)

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], labels=self.y[idx])


class RecordHook(Hook):
    """Records the state of the runner when training starts."""

    def __init__(self):
        self.first_iter = None
        self.optim_state_len = None

    def before_train(self, runner):
        self.optim_state_len = len(runner.optim_wrapper.optimizer.state)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.first_iter is None:
            self.first_iter = runner.iter


class EvilPayload:
    """Runs a shell command when unpickled."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd, ))


class GetattrPayload:
    """Reaches a non-allow-listed attribute through ``getattr``."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, 'register_statistics'))


OPTIM_CASES = {
    'sgd_multistep': (dict(type='SGD', lr=0.01, momentum=0.9),
                      dict(type='MultiStepLR', milestones=[2, 3],
                           by_epoch=False)),
    'adam_cosine': (dict(type='Adam', lr=0.01),
                    dict(type='CosineAnnealingLR', T_max=6, by_epoch=False)),
    'sgd_onecycle': (dict(type='SGD', lr=0.01, momentum=0.9),
                     dict(type='OneCycleLR', eta_max=0.01, total_steps=6,
                          by_epoch=False)),
}


def _make_runner(work_dir, case, max_iters, **kwargs):
    optimizer, scheduler = OPTIM_CASES[case]
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'{case}_{uuid.uuid4().hex}',
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
            batch_size=2,
            num_workers=0),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=optimizer),
        param_scheduler=scheduler,
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0),
        log_level='WARNING',
        **kwargs)


def _save_torch(obj, path):
    torch.save(obj, str(path))
    return str(path)


@pytest.mark.parametrize('case', sorted(OPTIM_CASES))
def test_runner_checkpoint_load_and_resume(tmp_path, case):
    runner = _make_runner(tmp_path / 'train', case, max_iters=4)
    runner.message_hub.update_info('np_info', np.float64(0.25))
    runner.train()
    ckpt_path = str(tmp_path / 'train' / 'iter_4.pth')
    assert os.path.isfile(ckpt_path)

    # Plain weight loading through mmengine.
    model = ToyModel()
    ckpt = load_checkpoint(model, ckpt_path, map_location='cpu')
    assert ckpt['meta']['iter'] == 4
    trained = runner.model.state_dict()
    loaded = model.state_dict()
    assert trained.keys() == loaded.keys()
    for key in trained:
        assert torch.equal(trained[key], loaded[key]), key

    # The checkpoint's metadata survives.
    raw = load_checkpoint_safe(ckpt_path)
    assert raw['message_hub']['runtime_info']['np_info'] == 0.25
    assert isinstance(raw['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    np.testing.assert_array_equal(raw['meta']['dataset_meta']['mean'],
                                  ToyDataset.metainfo['mean'])

    # Resume a new runner from it.
    record = RecordHook()
    resumed = _make_runner(
        tmp_path / 'resume',
        case,
        max_iters=6,
        resume=True,
        load_from=ckpt_path,
        custom_hooks=[record])
    resumed.train()
    assert record.first_iter == 4
    assert record.optim_state_len > 0
    assert resumed.iter == 6


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = _save_torch({'state_dict': {}, 'x': EvilPayload(f'touch {marker}')},
                       tmp_path / 'evil.pth')

    with pytest.raises(UnsafeCheckpointError) as exc_info:
        load_checkpoint(ToyModel(), path, map_location='cpu')
    msg = str(exc_info.value)
    assert path in msg
    assert 'posix.system' in msg or 'os.system' in msg
    assert 'refused for safety' in msg
    assert 'torch.serialization.add_safe_globals' in msg
    assert exc_info.value.filename == path
    assert isinstance(exc_info.value, pickle.UnpicklingError)
    assert not marker.exists()

    # The same through a Runner and the public helper.
    runner = _make_runner(tmp_path / 'work', 'sgd_multistep', max_iters=1)
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        runner.load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint_safe(path)
    assert not marker.exists()


def test_unlisted_globals_named(tmp_path):
    path = _save_torch({'f': functools.partial(print, 1)},
                       tmp_path / 'partial.pth')
    with pytest.raises(UnsafeCheckpointError) as exc_info:
        load_checkpoint(ToyModel(), path)
    assert exc_info.value.global_name == 'functools.partial'
    assert 'functools.partial' in str(exc_info.value)

    assert 'torch.serialization.add_safe_globals([functools.partial])' in str(
        exc_info.value)

    path = _save_torch({'f': GetattrPayload()}, tmp_path / 'getattr.pth')
    with pytest.raises(UnsafeCheckpointError) as exc_info:
        load_checkpoint_safe(path)
    assert 'register_statistics' in exc_info.value.global_name


def test_missing_file(tmp_path):
    path = str(tmp_path / 'missing.pth')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint(ToyModel(), path)
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint_safe(path)


def test_safety_not_disabled_globally(tmp_path):
    marker = tmp_path / 'pwned'
    path = _save_torch({'x': EvilPayload(f'touch {marker}')},
                       tmp_path / 'evil.pth')
    # The default of torch.load stays weights_only=True.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()

    path = _save_torch({'f': functools.partial(print, 1)},
                       tmp_path / 'partial.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)

    # No generic callable is on the allow-list.
    allowed = set()
    for item in torch.serialization.get_safe_globals():
        allowed.add(item[0] if isinstance(item, tuple) else item)
    for func in (eval, exec, getattr, setattr, os.system, functools.partial,
                 __import__, pickle.loads):
        assert func not in allowed

    # Only local paths are re-routed.
    assert CheckpointLoader._get_checkpoint_loader(
        str(tmp_path / 'a.pth')) is load_from_local_safe
    assert CheckpointLoader._get_checkpoint_loader(
        'https://example.com/a.pth') is not load_from_local_safe


def test_numpy1_names_accepted():
    # A checkpoint pickled with numpy 1.x refers to ``numpy.core``; emulate
    # one with the legacy (non-zip) format, whose pickle can be edited.
    buf = io.BytesIO()
    torch.save({'a': np.float64(1.5), 'b': np.arange(3)},
               buf,
               _use_new_zipfile_serialization=False)
    data = buf.getvalue().replace(b'numpy._core.multiarray',
                                  b'numpy.core.multiarray')
    assert b'numpy.core.multiarray' in data
    out = torch.load(io.BytesIO(data), weights_only=True)
    assert out['a'] == 1.5
    np.testing.assert_array_equal(out['b'], np.arange(3))


def test_register_idempotent():
    names = register_safe_globals()
    before = list(torch.serialization.get_safe_globals())
    assert register_safe_globals() == names
    install_safe_checkpoint_loading()
    install_safe_checkpoint_loading()
    after = list(torch.serialization.get_safe_globals())
    assert len(after) == len(before)
    assert set(map(repr, after)) == set(map(repr, before))
    assert CheckpointLoader._schemes[''] is load_from_local_safe
    assert len(names) == len(set(names))
    for name in ('numpy._core.multiarray.scalar', 'numpy.dtype',
                 'numpy.ndarray', 'numpy._core.multiarray._reconstruct',
                 'numpy.dtypes.Float64DType',
                 'mmengine.logging.history_buffer.HistoryBuffer'):
        assert name in names
    # The ``builtins.getattr`` entry is the restricted stand-in.
    assert ckpt_utils._restricted_getattr(HistoryBuffer,
                                          'mean') is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError):
        ckpt_utils._restricted_getattr(os, 'system')
