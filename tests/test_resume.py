"""Kill a training run, resume it, and get exactly the uninterrupted result."""
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from conftest import DDAQ_CONFIG, ROOT
from mmddaq.engine.hooks import RandomStateHook
from mmddaq.engine.hooks.random_state_hook import (capture_random_state,
                                                   restore_random_state)
from mmddaq.utils import load_checkpoint_safe

PY = sys.executable
MAX_ITERS = 4
PAUSE_AT = 2  # killed after iteration 3, one iteration past iter_2.pth
CUSTOM_HOOKS = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4, num_batches=1,
                     num_probes=2)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=3),
    dict(type='mmddaq.GeneratedSamplesHook', interval=1, num_samples=4),
]

PAUSE_HOOK = '''
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class PauseAfterIterHook(Hook):
    """Announce that iteration ``at`` is done, then wait to be killed."""

    priority = 'LOWEST'

    def __init__(self, at, signal_file):
        self.at = at
        self.signal_file = signal_file

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter == self.at:
            with open(self.signal_file, 'w') as f:
                f.write(str(runner.iter))
            while True:
                time.sleep(0.05)
'''


def tiny_body(fp_ckpt):
    """A few-second DDAQ run whose every stateful part moves.

    Checkpoints every 2 iterations, validation every 2 (so one happens
    between the checkpoint and the kill), calibration still running when
    the run is killed, both optimizers with momentum and a scheduler each.
    """
    return textwrap.dedent(f"""
    model = dict(
        fp_checkpoint='{fp_ckpt}',
        architecture=dict(backbone=dict(stem_channels=8, base_channels=8),
                          head=dict(in_channels=64)),
        generator=dict(base_channels=16, latent_dim=16))
    train_cfg = dict(max_iters={MAX_ITERS}, batch_size=8, warmup_iters=1,
                     val_interval=2)
    val_dataloader = dict(batch_size=270)
    param_scheduler = dict(
        generator=[dict(type='LinearLR', start_factor=0.5, by_epoch=False,
                        begin=0, end={MAX_ITERS})],
        quantized=[dict(type='CosineAnnealingLR', T_max={MAX_ITERS},
                        by_epoch=False)])
    default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=1),
                         logger=dict(interval=1))
    randomness = dict(seed=123)
    custom_hooks = {CUSTOM_HOOKS}
    """)


def popen(args, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1',
               MKL_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join(
                   [str(tmp_path), os.environ.get('PYTHONPATH', '')]))
    return subprocess.Popen([PY, 'tools/train.py'] + args, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def assert_same(a, b, path='checkpoint'):
    """Exact equality of nested checkpoint contents, naming the difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), \
            f'{path} differs (max abs diff {(a - b).abs().max()})' \
            if a.is_floating_point() else f'{path} differs'
    elif isinstance(a, dict):
        assert set(a) == set(b), f'{path}: keys {set(a) ^ set(b)}'
        for key in a:
            assert_same(a[key], b[key], f'{path}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{path}[{i}]')
    else:
        assert a == b, f'{path}: {a!r} != {b!r}'


def test_killed_and_resumed_run_equals_uninterrupted_run(
        tiny_fp_checkpoint, tmp_path):
    (tmp_path / 'pause_hook.py').write_text(PAUSE_HOOK)
    cfg = tmp_path / 'ddaq.py'
    cfg.write_text(f"_base_ = '{DDAQ_CONFIG}'\n" +
                   tiny_body(tiny_fp_checkpoint))
    signal_file = tmp_path / 'paused'
    paused_cfg = tmp_path / 'ddaq_paused.py'
    paused_cfg.write_text(textwrap.dedent(f"""
    _base_ = './ddaq.py'
    custom_imports = dict(imports=['mmddaq', 'pause_hook'],
                          allow_failed_imports=False)
    custom_hooks = {CUSTOM_HOOKS + [
        dict(type='PauseAfterIterHook', at=PAUSE_AT,
             signal_file=str(signal_file))]}
    """))
    ref_dir, run_dir = tmp_path / 'uninterrupted', tmp_path / 'killed'

    reference = popen([str(cfg), '--work-dir', str(ref_dir)], tmp_path)
    victim = popen([str(paused_cfg), '--work-dir', str(run_dir)], tmp_path)
    try:
        deadline = time.time() + 600
        while not signal_file.exists():
            if victim.poll() is not None:
                pytest.fail('the run ended before it could be killed:\n' +
                            victim.stdout.read()[-4000:])
            assert time.time() < deadline, 'the run never reached the kill'
            time.sleep(0.1)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        victim.stdout.close()
    assert victim.returncode == -signal.SIGKILL
    # killed one iteration past the checkpoint it can resume from
    assert (run_dir / 'last_checkpoint').read_text().strip() == str(
        run_dir / 'iter_2.pth')
    assert not (run_dir / f'iter_{MAX_ITERS}.pth').exists()

    resumed = popen([str(cfg), '--work-dir', str(run_dir), '--resume'],
                    tmp_path)
    log = finish(resumed)
    finish(reference)
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'Random state restored from the checkpoint (iteration 2)' in log
    assert 'Layer importance restored from checkpoint' in log

    final = f'iter_{MAX_ITERS}.pth'
    ref = load_checkpoint_safe(str(ref_dir / final))
    res = load_checkpoint_safe(str(run_dir / final))
    assert ref['meta']['iter'] == res['meta']['iter'] == MAX_ITERS
    state = ref['state_dict']
    # what must be equal is really there
    assert any(k.startswith('generator.') for k in state)
    assert any(k.startswith('quantized.') and k.endswith('min_val')
               for k in state)
    assert state['_extra_state']['layer_importance']
    assert set(ref['optimizer']) == {'generator', 'quantized'}
    assert set(ref['param_schedulers']) == {'generator', 'quantized'}
    for key in ('state_dict', 'optimizer', 'param_schedulers',
                'random_state'):
        assert_same(ref[key], res[key], key)


# ----------------------------------------------------------------- units
class _Runner:
    """The little of a Runner that RandomStateHook touches."""

    def __init__(self, it):
        self.iter = it
        self.logger = logging.getLogger('test_resume')


def _draw():
    return (random.random(), float(np.random.rand()),
            float(torch.rand(())))


def test_random_state_roundtrip_through_a_safe_checkpoint(tmp_path):
    torch.manual_seed(0)
    hook = RandomStateHook()
    ckpt = {'meta': {'iter': 5}}
    hook.before_save_checkpoint(_Runner(5), ckpt)
    path = tmp_path / 'ckpt.pth'
    torch.save(ckpt, path)
    expected = _draw()
    _draw()  # the run goes on, then is killed

    loaded = load_checkpoint_safe(str(path))  # weights_only still works
    hook = RandomStateHook()
    hook.after_load_checkpoint(_Runner(5), loaded)
    hook.before_train(_Runner(5))
    assert _draw() == expected


def test_loading_weights_for_a_new_run_keeps_its_seeding():
    state = capture_random_state()
    ckpt = {'meta': {'iter': 5}, 'random_state': [state]}
    first = _draw()
    hook = RandomStateHook()
    hook.after_load_checkpoint(_Runner(0), ckpt)
    hook.before_train(_Runner(0))  # load_from: iteration 0, not resumed
    assert _draw() != first


def test_validation_leaves_training_randomness_alone():
    hook, runner = RandomStateHook(), _Runner(3)
    state = capture_random_state()
    expected = _draw()
    restore_random_state(state)
    hook.before_val(runner)
    _draw()  # e.g. a dataloader seeding its workers
    hook.after_val(runner)
    assert _draw() == expected
