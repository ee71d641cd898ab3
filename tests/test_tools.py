"""The command-line tools, run as a user runs them (subprocesses)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import DDAQ_CONFIG, FP_CONFIG, ROOT

PY = sys.executable


def run(args, cwd=ROOT, check=True):
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([PY] + args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f'{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
            f'{proc.stderr[-3000:]}')
    return proc


def write_config(path, base, body):
    path.write_text(f"_base_ = '{base}'\n{body}\n")
    return str(path)


TINY_FP = """
model = dict(backbone=dict(stem_channels=8, base_channels=8),
             head=dict(in_channels=64))
train_cfg = dict(max_epochs=1, val_interval=1)
train_dataloader = dict(batch_size=128)
param_scheduler = dict(T_max=1)
default_hooks = dict(checkpoint=dict(interval=1))
"""


def tiny_ddaq_body(fp_ckpt, iters=4):
    return f"""
model = dict(
    fp_checkpoint='{fp_ckpt}',
    architecture=dict(backbone=dict(stem_channels=8, base_channels=8),
                      head=dict(in_channels=64)),
    generator=dict(base_channels=16, latent_dim=16))
train_cfg = dict(max_iters={iters}, batch_size=8, warmup_iters=1,
                 val_interval={iters})
default_hooks = dict(checkpoint=dict(interval=2))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4, num_batches=1,
                     num_probes=2)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=2),
    dict(type='mmddaq.GeneratedSamplesHook', interval=2, num_samples=4),
]
"""


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Train a tiny FP digits model, then DDAQ, through tools/train.py."""
    tmp = tmp_path_factory.mktemp('cli')
    fp_cfg = write_config(tmp / 'fp.py', FP_CONFIG, TINY_FP)
    run(['tools/train.py', fp_cfg, '--work-dir', str(tmp / 'fp')])
    fp_ckpt = str(tmp / 'fp' / 'epoch_1.pth')
    assert osp.isfile(fp_ckpt)
    ddaq_cfg = write_config(tmp / 'ddaq.py', DDAQ_CONFIG,
                            tiny_ddaq_body(fp_ckpt))
    proc = run(['tools/train.py', ddaq_cfg, '--work-dir', str(tmp / 'ddaq')])
    return tmp, fp_cfg, fp_ckpt, ddaq_cfg, proc


def test_train_writes_checkpoint_importance_and_samples(trained):
    tmp, _, _, _, proc = trained
    work = tmp / 'ddaq'
    assert (work / 'iter_4.pth').is_file()
    imp = json.loads((work / 'layer_importance.json').read_text())
    assert len(imp) > 10
    assert sum(imp.values()) / len(imp) == pytest.approx(1.0)
    pngs = list(work.glob('*/vis_data/vis_image/generated_samples_*.png'))
    assert pngs, 'no generated-sample picture was saved'
    log = proc.stdout + proc.stderr
    assert 'Activation ranges frozen' in log
    assert 'accuracy/top1' in log


def test_test_tool_evaluates_quantized_and_fp(trained, tmp_path):
    tmp, fp_cfg, fp_ckpt, ddaq_cfg, _ = trained
    out_q, out_fp, out_ref = (tmp_path / 'q.json', tmp_path / 'fp.json',
                              tmp_path / 'ref.json')
    ckpt = str(tmp / 'ddaq' / 'iter_4.pth')
    run(['tools/test.py', ddaq_cfg, ckpt, '--out', str(out_q),
         '--work-dir', str(tmp_path / 'w1')])
    run(['tools/test.py', ddaq_cfg, ckpt, '--eval-model', 'fp', '--out',
         str(out_fp), '--work-dir', str(tmp_path / 'w2')])
    run(['tools/test.py', fp_cfg, fp_ckpt, '--out', str(out_ref),
         '--work-dir', str(tmp_path / 'w3')])
    q = json.loads(out_q.read_text())['accuracy/top1']
    fp = json.loads(out_fp.read_text())['accuracy/top1']
    ref = json.loads(out_ref.read_text())['accuracy/top1']
    assert 0 <= q <= 100
    # the FP model inside the DDAQ checkpoint is exactly the trained one
    assert fp == pytest.approx(ref)


def test_resume_continues_from_checkpoint(trained, tmp_path):
    tmp, _, fp_ckpt, _, _ = trained
    cfg6 = write_config(tmp_path / 'ddaq6.py', DDAQ_CONFIG,
                        tiny_ddaq_body(fp_ckpt, iters=6))
    work = tmp_path / 'work'
    work.mkdir()
    ckpt = str(tmp / 'ddaq' / 'iter_4.pth')
    proc = run(['tools/train.py', cfg6, '--work-dir', str(work), '--resume',
                ckpt])
    log = proc.stdout + proc.stderr
    assert 'resumed epoch: 0, iter: 4' in log
    assert 'Layer importance restored from checkpoint' in log
    assert (work / 'iter_6.pth').is_file()
    state = torch.load(work / 'iter_6.pth', weights_only=True)
    assert state['meta']['iter'] == 6


def test_cli_errors_are_clear(trained, tmp_path):
    tmp, _, fp_ckpt, ddaq_cfg, _ = trained
    proc = run(['tools/train.py', 'configs/nope.py'], check=False)
    assert proc.returncode != 0 and 'configs/nope.py' in proc.stderr
    proc = run(['tools/train.py', ddaq_cfg, '--work-dir',
                str(tmp_path / 'b'), '--cfg-options',
                'model.quantizer.w_bits=9'], check=False)
    assert proc.returncode != 0
    assert 'Unsupported weight bit-width 9' in proc.stderr
    proc = run(['tools/test.py', ddaq_cfg, str(tmp_path / 'missing.pth')],
               check=False)
    assert proc.returncode != 0 and 'missing.pth' in proc.stderr
