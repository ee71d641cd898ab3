"""DDAQ on a CUDA GPU: fake quantization, iterations, AMP and the CLI.

Skipped where no GPU is visible (CI); run on a GPU machine with
``pytest tests/test_cuda.py``.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from conftest import DDAQ_CONFIG, tiny_ddaq_options
from mmddaq.apis import load_config
from mmddaq.quantization import (ModelQuantizer, calibrate_activations,
                                 freeze_activations)
from test_ddaq import build_tiny_ddaq, params_of, same
from test_tools import run, tiny_ddaq_body, write_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason='needs a CUDA GPU')

PLANS = [
    dict(batch_size=8, update_generator=True, update_quantized=False),
    dict(batch_size=8, update_generator=True, update_quantized=True),
    dict(batch_size=8, update_generator=False, update_quantized=True),
]


def test_fake_quant_on_cuda_matches_cpu():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 10))
    q_cpu = ModelQuantizer(w_bits=4, a_bits=4).quantize(net)
    x = torch.randn(16, 3, 8, 8)
    calibrate_activations(q_cpu)
    q_cpu(x)
    freeze_activations(q_cpu)
    q_gpu = copy.deepcopy(q_cpu).cuda()
    out_cpu = q_cpu(x)
    out_gpu = q_gpu(x.cuda()).cpu()
    scale = out_cpu.abs().max()
    assert (out_cpu - out_gpu).abs().max() <= 1e-3 * scale
    # straight-through gradients reach the weights on the GPU too
    q_gpu(x.cuda()).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in q_gpu.parameters())


def _steps_on_cuda(model, optim):
    fp_before = params_of(model.fp_model)
    q_before = params_of(model.quantized)
    calibrate_activations(model.quantized)
    logs = [model.train_step(plan, optim) for plan in PLANS]
    for log in logs:
        assert all(torch.isfinite(v).all() for v in log.values())
    assert same(fp_before, params_of(model.fp_model))
    assert not same(q_before, params_of(model.quantized))
    assert all(p.is_cuda for p in model.parameters())
    return logs


def test_ddaq_iterations_on_cuda(tiny_fp_checkpoint):
    model, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    model.cuda()
    cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(tiny_fp_checkpoint))
    _steps_on_cuda(model, build_optim_wrapper(model, cfg.optim_wrapper))


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_ddaq_amp_on_cuda(tiny_fp_checkpoint, dtype):
    model, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    model.cuda()
    cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(tiny_fp_checkpoint))
    for key in ('generator', 'quantized'):
        cfg.optim_wrapper[key].update(type='AmpOptimWrapper', dtype=dtype)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    seen = []
    conv = next(m for m in model.fp_model.modules()
                if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(
        lambda m, i, o: seen.append(o.dtype))
    try:
        _steps_on_cuda(model, optim)
    finally:
        handle.remove()
    # the forward passes really ran in reduced precision
    assert getattr(torch, dtype) in seen


def test_train_and_test_cli_on_cuda_with_amp(tiny_fp_checkpoint, tmp_path):
    cfg = write_config(tmp_path / 'ddaq.py', DDAQ_CONFIG,
                       tiny_ddaq_body(tiny_fp_checkpoint))
    work = tmp_path / 'work'
    run(['tools/train.py', cfg, '--work-dir', str(work), '--amp'])
    ckpt = str(work / 'iter_4.pth')
    assert osp.isfile(ckpt)
    proc = run(['tools/test.py', cfg, ckpt, '--work-dir',
                str(tmp_path / 'test')])
    assert 'accuracy/top1' in proc.stdout + proc.stderr
