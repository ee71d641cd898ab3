"""Bad input: a clear error, raised early, and nothing the user had lost.

Every case starts from a work dir that holds a finished run (checkpoint,
``last_checkpoint``, layer importance, logs) and checks, besides the error
message, that each of those files still has the same content and mtime
afterwards and, where training could start, that no training step ran.
"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import MODELS, init_default_scope

from conftest import DDAQ_CONFIG, FP_CONFIG, ROOT, tiny_ddaq_options
from mmddaq.apis import load_config, runner_from_cfg
from mmddaq.models import DDAQ
from mmddaq.utils import (UnsafeCheckpointError, atomic_write_bytes,
                          load_checkpoint_safe, remove_stale_temp_files)

SHAPES_DDAQ_CONFIG = os.path.join(ROOT, 'configs',
                                  'ddaq_retinanet_r18-w16_shapes_w4a4.py')
COCO_DDAQ_CONFIG = os.path.join(ROOT, 'configs', 'ddaq_retinanet_w4a4.py')
WIDE = {  # a model of the same family that is twice as wide
    'model.architecture.backbone.stem_channels': 16,
    'model.architecture.backbone.base_channels': 16,
    'model.architecture.head.in_channels': 128,
}


# ------------------------------------------------------------------ helpers
def make_runner(fp_checkpoint, work_dir, max_iters=4, options=None,
                **cfg_updates):
    """A runner of the tiny digits DDAQ config (checkpoint every 2 iters)."""
    opts = tiny_ddaq_options(fp_checkpoint, max_iters=max_iters)
    opts['default_hooks.checkpoint.interval'] = 2
    opts.update(options or {})
    cfg = load_config(DDAQ_CONFIG, opts)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f'run_{time.time_ns()}'
    cfg.update(cfg_updates)
    return runner_from_cfg(cfg)


def snapshot(folder):
    """``{relative path: (sha256, mtime_ns)}`` of the files the user has.

    MMEngine rewrites its copy of the config (``<config name>.py``) in the
    work dir at every run, resumed or not, so it is left out; every
    checkpoint keeps its own config in ``meta.cfg``.
    """
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.sep not in rel and rel.endswith('.py'):
                continue
            with open(path, 'rb') as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            files[rel] = (digest, os.stat(path).st_mtime_ns)
    return files


def assert_nothing_lost(before, folder):
    after = snapshot(folder)
    for rel, state in before.items():
        assert rel in after, f'{rel} was deleted'
        assert after[rel] == state, f'{rel} was changed'


def wide_fp_checkpoint(path):
    """Weights of a digits classifier twice as wide as the tiny one."""
    init_default_scope('mmpretrain')
    cfg = load_config(FP_CONFIG, {
        'model.backbone.stem_channels': 16,
        'model.backbone.base_channels': 16,
        'model.head.in_channels': 128
    })
    torch.manual_seed(0)
    torch.save({'state_dict': MODELS.build(cfg.model).state_dict()}, path)
    return str(path)


class EvilPayload:
    """Runs a shell command when unpickled."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd, ))


class BreakAtIterHook(Hook):
    """Put NaN into a submodule's parameters after iteration ``at``."""

    def __init__(self, at, module, priority='LOWEST'):
        self.at = at
        self.module = module
        self.priority = priority

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter == self.at:
            model = getattr(runner.model, 'module', runner.model)
            with torch.no_grad():
                for p in getattr(model, self.module).parameters():
                    p.fill_(float('nan'))


@pytest.fixture(scope='module')
def previous_run(tiny_fp_checkpoint, tmp_path_factory):
    """A finished 2-iteration run: what a user's work dir holds."""
    work = tmp_path_factory.mktemp('previous') / 'work'
    make_runner(tiny_fp_checkpoint, work, max_iters=2).train()
    assert (work / 'iter_2.pth').is_file()
    return work


@pytest.fixture
def user_dir(previous_run, tmp_path):
    """A copy of the previous run, with ``last_checkpoint`` pointing in it."""
    work = tmp_path / 'work'
    shutil.copytree(previous_run, work)
    (work / 'last_checkpoint').write_text(str(work / 'iter_2.pth'))
    return work


@pytest.fixture
def train_steps(monkeypatch):
    """Counts DDAQ training steps: 0 means the error came before training."""
    calls = []
    original = DDAQ.train_step

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DDAQ, 'train_step', counting)
    return calls


# -------------------------------------------------------- config mistakes
@pytest.mark.parametrize('key, value, match', [
    ('model.quantizer.w_bits', 9, 'Unsupported weight bit-width 9'),
    ('model.quantizer.a_bits', 1, 'Unsupported activation bit-width 1'),
])
def test_unsupported_bit_width(tiny_fp_checkpoint, user_dir, key, value,
                               match):
    before = snapshot(user_dir)
    with pytest.raises(ValueError, match=match):
        make_runner(tiny_fp_checkpoint, user_dir, options={key: value})
    assert_nothing_lost(before, user_dir)


def test_d1_needs_batchnorm_layers(tiny_fp_checkpoint, user_dir):
    # GroupNorm keeps no running statistics: nothing for D1 to match
    before = snapshot(user_dir)
    with pytest.raises(ValueError, match='no BatchNorm layers.*D1.*bns=0'):
        make_runner(None, user_dir, options={
            'model.architecture.backbone.norm_cfg': dict(
                type='GN', num_groups=4)})
    assert_nothing_lost(before, user_dir)


def test_unknown_registry_type_is_named(tiny_fp_checkpoint, user_dir):
    before = snapshot(user_dir)
    with pytest.raises(KeyError, match='NoSuchQuantizer is not in the'):
        make_runner(tiny_fp_checkpoint, user_dir, options={
            'model.quantizer.type': 'mmddaq.NoSuchQuantizer'})
    hooks = tiny_ddaq_options(tiny_fp_checkpoint)['custom_hooks'] + [
        dict(type='mmddaq.NoSuchHook')]
    with pytest.raises(KeyError, match='NoSuchHook is not in the'):
        make_runner(tiny_fp_checkpoint, user_dir,
                    options={'custom_hooks': hooks})
    assert_nothing_lost(before, user_dir)


# --------------------------------------------------------------- paths
def test_unwritable_work_dir(tiny_fp_checkpoint, tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('user data')
    before = snapshot(tmp_path)
    with pytest.raises(PermissionError,
                       match=f'cannot create the work dir "{blocker}'):
        make_runner(tiny_fp_checkpoint, blocker / 'work')
    assert_nothing_lost(before, tmp_path)


@pytest.mark.skipif(
    hasattr(os, 'geteuid') and os.geteuid() == 0,
    reason='root may write into read-only folders')
def test_read_only_work_dir(tiny_fp_checkpoint, user_dir):
    before = snapshot(user_dir)
    os.chmod(user_dir, 0o555)
    try:
        with pytest.raises(PermissionError, match='is not writable'):
            make_runner(tiny_fp_checkpoint, user_dir)
    finally:
        os.chmod(user_dir, 0o755)
    assert_nothing_lost(before, user_dir)


def test_missing_fp_checkpoint_is_named(user_dir):
    before = snapshot(user_dir)
    missing = str(user_dir / 'no_such_fp.pth')
    with pytest.raises(FileNotFoundError, match='no_such_fp.pth'):
        make_runner(missing, user_dir)
    assert_nothing_lost(before, user_dir)


def test_missing_detection_data_root(user_dir, train_steps, tmp_path):
    missing = tmp_path / 'no_such_root'
    cfg = load_config(SHAPES_DDAQ_CONFIG, {
        'model.fp_checkpoint': None,
        'val_dataloader.dataset.data_root': f'{missing}/',
        'test_dataloader.dataset.data_root': f'{missing}/',
        'val_evaluator.ann_file': f'{missing}/annotations/val.json',
        'train_cfg.max_iters': 2,
        'train_cfg.warmup_iters': 1,
    })
    cfg.work_dir = str(user_dir)
    before = snapshot(user_dir)
    runner = runner_from_cfg(cfg)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        runner.train()
    assert not train_steps, 'the error came after training had started'
    assert_nothing_lost(before, user_dir)
    assert not missing.exists()


def test_missing_validation_images_fail_before_training(
        user_dir, train_steps, tmp_path):
    # the annotation file is there, the image folder is not: without the
    # check this would only fail at the first validation
    _shapes_val_set(tmp_path / 'shapes')
    cfg = load_config(COCO_DDAQ_CONFIG, {
        'model.fp_checkpoint': None,
        'val_dataloader.dataset.data_root': str(tmp_path / 'shapes'),
        'val_dataloader.dataset.ann_file': 'annotations/instances_val.json',
        'val_dataloader.dataset.data_prefix.img': 'images_moved/',
        # short, in case the check ever goes: then the test fails, fast
        'train_cfg.max_iters': 1, 'train_cfg.warmup_iters': 0,
        'train_cfg.batch_size': 1, 'custom_hooks': [],
        'val_evaluator.ann_file':
        str(tmp_path / 'shapes' / 'annotations' / 'instances_val.json'),
    })
    cfg.work_dir = str(user_dir)
    before = snapshot(user_dir)
    runner = runner_from_cfg(cfg)
    with pytest.raises(FileNotFoundError,
                       match=r'3 of 3 validation images do not exist.*'
                       r'images_moved/000001\.png'):
        runner.train()
    assert not train_steps
    assert_nothing_lost(before, user_dir)


# ---------------------------------------------------------- checkpoints
def test_fp_checkpoint_of_another_model(tiny_fp_checkpoint, user_dir,
                                        tmp_path):
    wide = wide_fp_checkpoint(tmp_path / 'wide_fp.pth')
    before = snapshot(user_dir)
    wide_before = snapshot(tmp_path)
    with pytest.raises(ValueError,
                       match='does not match the model.*shape mismatches'):
        make_runner(wide, user_dir)
    assert_nothing_lost(before, user_dir)
    assert_nothing_lost(wide_before, tmp_path)


def test_resume_from_checkpoint_of_another_model(user_dir, train_steps,
                                                 tmp_path):
    # MMEngine alone would only warn and train on with random weights
    wide = wide_fp_checkpoint(tmp_path / 'wide_fp.pth')
    before = snapshot(user_dir)
    runner = make_runner(wide, user_dir, options=WIDE, resume=True)
    with pytest.raises(ValueError,
                       match='Cannot resume from .*iter_2.pth.*does not '
                       'match the model.*shape mismatches'):
        runner.train()
    assert not train_steps
    assert_nothing_lost(before, user_dir)


def test_malicious_checkpoint_refused(tiny_fp_checkpoint, user_dir,
                                      train_steps, tmp_path):
    marker = tmp_path / 'pwned'
    evil = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'meta': {'iter': 2},
                'x': EvilPayload(f'touch {marker}')}, evil)
    before = snapshot(user_dir)
    # as the FP weights of a config
    with pytest.raises(UnsafeCheckpointError, match='evil.pth'):
        make_runner(str(evil), user_dir)
    # as the checkpoint a run resumes from
    runner = make_runner(tiny_fp_checkpoint, user_dir, resume=True,
                         load_from=str(evil))
    with pytest.raises(UnsafeCheckpointError,
                       match='evil.pth.*refused for safety'):
        runner.train()
    assert not marker.exists()
    assert not train_steps
    assert_nothing_lost(before, user_dir)


# ------------------------------------------------------------ divergence
def test_diverging_generator_stops_and_keeps_last_good_checkpoint(
        tiny_fp_checkpoint, user_dir):
    # the generator blows up right after iter_2.pth was written
    before = snapshot(user_dir)
    runner = make_runner(tiny_fp_checkpoint, user_dir / 'run')
    runner.register_hook(BreakAtIterHook(1, 'generator'))
    good = str(user_dir / 'run' / 'iter_2.pth')
    with pytest.raises(FloatingPointError) as info:
        runner.train()
    msg = str(info.value)
    assert 'Iteration 3:' in msg and 'became nan' in msg
    assert f'The last good checkpoint is "{good}"' in msg
    assert f'--resume {good}' in msg
    run = user_dir / 'run'
    assert (run / 'last_checkpoint').read_text() == good
    assert not (run / 'iter_4.pth').exists()
    state = load_checkpoint_safe(good)
    assert state['meta']['iter'] == 2
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values()
               if isinstance(v, torch.Tensor) and v.is_floating_point())
    assert_nothing_lost(before, user_dir)


def test_non_finite_weights_are_never_saved(tiny_fp_checkpoint, tmp_path):
    # a NaN that reaches the weights without a NaN loss (yet) is caught by
    # the checkpoint hook before anything is written
    work = tmp_path / 'run'
    runner = make_runner(tiny_fp_checkpoint, work)
    runner.register_hook(BreakAtIterHook(3, 'quantized', priority='LOW'))
    with pytest.raises(FloatingPointError,
                       match='Not saving a checkpoint at iteration 4: model '
                       'parameter "quantized.*holds NaN/Inf'):
        runner.train()
    good = str(work / 'iter_2.pth')
    assert (work / 'last_checkpoint').read_text() == good
    assert not (work / 'iter_4.pth').exists()
    assert load_checkpoint_safe(good)['meta']['iter'] == 2


# ----------------------------------------------- interrupted checkpoints
@pytest.mark.parametrize('failure', ['while serialising', 'on disk'])
def test_failed_checkpoint_write_keeps_previous_files(
        tiny_fp_checkpoint, tmp_path, monkeypatch, failure):
    work = tmp_path / 'run'
    work.mkdir()
    # an older file of the same name as the one that will fail to save
    (work / 'iter_4.pth').write_bytes(b'user checkpoint')
    before = snapshot(work)

    import mmddaq.utils.atomic_io as atomic_io
    real_fsync, real_save = atomic_io.os.fsync, torch.save

    def disk_full(fd):
        """Fails once the 4-iteration checkpoint has been written."""
        link = f'/proc/self/fd/{fd}'
        path = os.readlink(link) if os.path.exists(link) else ''
        if '.iter_4.pth.' in path:
            raise OSError(28, 'No space left on device')
        return real_fsync(fd)

    def half_save(obj, f, *args, **kwargs):
        """Writes half of the 4-iteration checkpoint, then fails."""
        if isinstance(obj, dict) and obj.get('meta', {}).get('iter') == 4:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
            raise OSError(28, 'No space left on device')
        return real_save(obj, f, *args, **kwargs)

    if failure == 'on disk':
        monkeypatch.setattr(atomic_io.os, 'fsync', disk_full)
    else:
        monkeypatch.setattr(torch, 'save', half_save)
    runner = make_runner(tiny_fp_checkpoint, work)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    assert_nothing_lost(before, work)
    assert (work / 'iter_4.pth').read_bytes() == b'user checkpoint'
    good = str(work / 'iter_2.pth')
    assert (work / 'last_checkpoint').read_text() == good
    assert load_checkpoint_safe(good)['meta']['iter'] == 2
    assert not list(work.glob('.*.tmp')), 'a partial file was left'
    # the run resumes from the last good checkpoint; what a killed save
    # leaves behind is cleaned up
    stale = [work / '.iter_6.pth.k1ll3d.tmp',
             work / '.last_checkpoint.k1ll3d.tmp']
    for path in stale:
        path.write_bytes(b'partial')
    monkeypatch.undo()
    resumed = make_runner(tiny_fp_checkpoint, work, resume=True)
    resumed.train()
    assert not any(path.exists() for path in stale)
    assert load_checkpoint_safe(str(work / 'iter_4.pth'))['meta']['iter'] \
        == 4


KILLED_WRITE = '''
import os, sys
import mmddaq.utils.atomic_io as atomic_io
atomic_io.os.replace = lambda *a: os._exit(9)  # die before the rename
atomic_io.atomic_write_bytes(sys.argv[1], b'new and complete')
'''


def test_process_killed_while_saving(tmp_path):
    target = tmp_path / 'iter_4.pth'
    target.write_bytes(b'old and complete')
    proc = subprocess.run([sys.executable, '-c', KILLED_WRITE,
                           str(target)], cwd=ROOT, capture_output=True)
    assert proc.returncode == 9, proc.stderr
    assert target.read_bytes() == b'old and complete'
    leftovers = list(tmp_path.glob('.iter_4.pth.*.tmp'))
    assert len(leftovers) == 1  # hidden, never under the real name
    (tmp_path / '.notes.tmp').write_text('not ours')
    assert remove_stale_temp_files(tmp_path, '*.pth') == [str(leftovers[0])]
    assert (tmp_path / '.notes.tmp').exists()
    (tmp_path / '.notes.tmp').unlink()
    atomic_write_bytes(target, b'new')
    assert target.read_bytes() == b'new'
    assert os.listdir(tmp_path) == ['iter_4.pth']


def test_old_checkpoints_deleted_only_after_new_one_is_saved(
        tiny_fp_checkpoint, tmp_path, monkeypatch):
    # max_keep_ckpts=1: MMEngine deletes iter_2.pth before writing
    # iter_4.pth; a failed save would then leave last_checkpoint dangling
    work = tmp_path / 'run'
    import mmddaq.utils.atomic_io as atomic_io
    real_replace = atomic_io.os.replace

    def fail_iter_4(src, dst):
        if str(dst).endswith('iter_4.pth'):
            raise OSError(5, 'Input/output error')
        return real_replace(src, dst)

    monkeypatch.setattr(atomic_io.os, 'replace', fail_iter_4)
    runner = make_runner(tiny_fp_checkpoint, work, options={
        'default_hooks.checkpoint.max_keep_ckpts': 1})
    with pytest.raises(OSError, match='Input/output error'):
        runner.train()
    good = work / 'iter_2.pth'
    assert (work / 'last_checkpoint').read_text() == str(good)
    assert load_checkpoint_safe(str(good))['meta']['iter'] == 2
    monkeypatch.setattr(atomic_io.os, 'replace', real_replace)
    make_runner(tiny_fp_checkpoint, work, resume=True, options={
        'default_hooks.checkpoint.max_keep_ckpts': 1}).train()
    assert not good.exists()  # now it may go
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_4.pth')


# ------------------------------------------------------------ detection
def _shapes_val_set(root):
    """Three shapes images; the first has no ground truth."""
    from mmddaq.datasets.shapes import generate_shapes
    generate_shapes(str(root), 'val', 3, img_size=64, max_objects=2)
    ann_file = root / 'annotations' / 'instances_val.json'
    coco = json.loads(ann_file.read_text())
    coco['annotations'] = [a for a in coco['annotations']
                           if a['image_id'] != coco['images'][0]['id']]
    ann_file.write_text(json.dumps(coco))
    return str(ann_file)


def test_empty_detections_and_images_without_objects(tmp_path):
    from mmengine.runner import Runner

    from mmddaq.datasets.shapes import shapes_metainfo
    from test_detection import SIZE, build
    model, optim = build('retinanet', tmp_path)
    # nothing passes the score threshold: every prediction is empty
    model.quantized.bbox_head.test_cfg.score_thr = 1.1
    log = model.train_step(dict(batch_size=2), optim)
    assert all(torch.isfinite(v) for v in log.values())
    ann_file = _shapes_val_set(tmp_path / 'shapes')
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(SIZE, SIZE), keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                        'scale_factor')),
    ]
    runner = Runner(
        model=model,
        work_dir=str(tmp_path / 'eval'),
        experiment_name=f'empty_{time.time_ns()}',
        default_scope='mmdet',
        val_dataloader=dict(
            batch_size=2, num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=dict(
                type='CocoDataset', data_root=str(tmp_path / 'shapes'),
                ann_file='annotations/instances_val.json',
                data_prefix=dict(img='val/'), metainfo=shapes_metainfo(),
                test_mode=True, pipeline=pipeline)),
        val_evaluator=dict(type='CocoMetric', ann_file=ann_file,
                           metric='bbox'),
        val_cfg=dict(type='ValLoop'),
        log_level='WARNING')
    metrics = runner.val()  # must not crash on empty results
    assert isinstance(metrics, dict)
    assert not any(k.endswith('bbox_mAP') and v > 0
                   for k, v in metrics.items())


def test_two_stage_step_without_proposals(tmp_path):
    from test_detection import build
    model, optim = build('faster_rcnn', tmp_path)
    model.fp_model.test_cfg.rpn.min_bbox_size = 1e6  # drops every proposal
    log = model.train_step(dict(batch_size=2), optim)
    assert all(torch.isfinite(v) for v in log.values())
