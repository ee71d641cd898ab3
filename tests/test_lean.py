"""Work a DDAQ iteration no longer does, and proof that nothing changed."""
import contextlib

import pytest
import torch
from torch import nn

from mmddaq.quantization import (QuantConv2d, WeightQuantizer,
                                 freeze_activations, quantize_weights_once)
from test_ddaq import build_tiny_ddaq, params_of

FULL = dict(batch_size=8, update_generator=True, update_quantized=True)


class SharedConv(nn.Module):
    """One quantized conv run on three inputs, like a head on FPN levels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = QuantConv2d(nn.Conv2d(4, 4, 3, padding=1))

    def forward(self, xs):
        return sum(self.conv(x).square().mean() for x in xs)


def test_weight_quantized_once_per_forward(monkeypatch):
    model = SharedConv()
    xs = [torch.randn(2, 4, 8, 8) * s for s in (1., 3., 9.)]
    model(xs)  # calibrate the activation range
    freeze_activations(model)
    calls = []
    original = WeightQuantizer._fake_quantize
    monkeypatch.setattr(
        WeightQuantizer, '_fake_quantize',
        lambda self, w: calls.append(1) or original(self, w))

    model(xs).backward()
    plain_grad = model.conv.weight.grad.clone()
    assert len(calls) == 3
    model.conv.weight.grad = None
    calls.clear()
    with quantize_weights_once(model):
        loss = model(xs)
    loss.backward()
    assert len(calls) == 1
    assert torch.allclose(model.conv.weight.grad, plain_grad, atol=1e-7)
    # the cache lives for one forward only: the next one quantizes again
    assert model.conv.weight_quantizer._forward_cache is None


class TwoConsumers(nn.Module):
    """A block input read by two convs: conv1 and the downsample."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = QuantConv2d(nn.Conv2d(4, 4, 3, padding=1))
        self.downsample = QuantConv2d(nn.Conv2d(4, 4, 1))

    def forward(self, x):
        return self.downsample(x) + self.conv1(x)


def test_a_tensor_fed_to_two_layers_is_fake_quantized_once(monkeypatch):
    from mmddaq.quantization import quantize_inputs_once, quantizers
    model = TwoConsumers()
    x = torch.randn(2, 4, 8, 8) * 3
    model(x)  # the same calibration batch: the same range for both
    freeze_activations(model)
    calls = []
    original = quantizers.fake_quantize

    def counted(*a):  # activations only (weights: 4 output channels)
        if a[0].shape[0] == 2:
            calls.append(1)
        return original(*a)

    monkeypatch.setattr(quantizers, 'fake_quantize', counted)

    def grads(x, once=True):
        x = x.clone().requires_grad_(True)
        model.zero_grad()
        calls.clear()
        with quantize_inputs_once(model) if once else \
                contextlib.nullcontext():
            out = model(x)
        out.square().sum().backward()
        return [out, x.grad] + [p.grad.clone() for p in model.parameters()]

    shared = grads(x)
    assert len(calls) == 1
    # each quantizer on its own: the same values and gradients
    alone = grads(x, once=False)
    assert len(calls) == 2
    assert all(torch.equal(a, b) for a, b in zip(shared, alone))
    # another grid: each quantizer computes its own result
    model.downsample.act_quantizer.observer.max_val.mul_(2)
    other = grads(x)
    assert len(calls) == 2
    assert all(torch.equal(a, b)
               for a, b in zip(other, grads(x, once=False)))
    model.downsample.act_quantizer.observer.max_val.div_(2)
    with quantize_inputs_once(model):
        # without autograd nothing is shared
        with torch.no_grad():
            calls.clear()
            model(x)
            assert len(calls) == 2
        # the input changed in place after the first consumer
        calls.clear()
        h = x.clone().requires_grad_(True) * 1
        model.conv1(h)
        h.add_(1)
        model.downsample(h)
        assert len(calls) == 2
        # the first result changed in place: not reused
        calls.clear()
        h = x.clone().requires_grad_(True) * 1
        first = model.conv1.act_quantizer(h)
        first.mul_(0)
        assert torch.equal(model.downsample.act_quantizer(h),
                           model.conv1.act_quantizer(h.detach()))
        assert len(calls) == 3
        # requires_grad switched on between two reads: not reused
        calls.clear()
        leaf = x.clone()
        model.conv1(leaf)
        leaf.requires_grad_(True)
        model.downsample(leaf).sum().backward()
        assert len(calls) == 2 and leaf.grad is not None
    # nothing is kept after the block, not even across two forwards in it
    assert all(q._forward_results is None for q in (
        model.conv1.act_quantizer, model.downsample.act_quantizer))


def test_d2_computed_once_same_quantized_update(tiny_fp_checkpoint,
                                                monkeypatch):
    """The quantized update with one D2 (generator's, FP not detached)
    equals the update with D2 on detached FP features."""
    runs = {}
    for name, update_g in (('both', True), ('q_only', False)):
        model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
        model.train_step(FULL, optim)  # calibration batch
        freeze_activations(model.quantized)
        calls = []
        original = type(model.dis_loss).forward
        monkeypatch.setattr(
            type(model.dis_loss), 'forward',
            lambda self, *a: calls.append(1) or original(self, *a))
        torch.manual_seed(1)
        plan = dict(FULL, update_generator=update_g)
        log = model.train_step(plan, optim)
        monkeypatch.undo()
        assert len(calls) == 1 and 'loss_q_dis' in log
        runs[name] = params_of(model.quantized)
    both, q_only = runs['both'], runs['q_only']
    assert all(torch.allclose(both[k], q_only[k], atol=1e-6) for k in both)


def _calibrated_tiny(ckpt, **overrides):
    model, optim = build_tiny_ddaq(ckpt, **overrides)
    torch.manual_seed(0)
    model.train_step(FULL, optim)  # calibration batch
    freeze_activations(model.quantized)
    return model, optim


def _step_grads(model, optim, seed=1):
    """Gradients by parameter name that one full step hands the
    optimisers (captured before they step)."""
    names = {p: n for n, p in model.named_parameters()}
    grads = {}

    def capture(params):
        grads.update({names[p]: p.grad.clone() for p in params
                      if p.grad is not None})

    torch.manual_seed(seed)
    log = model.train_step(FULL, optim, before_step=capture)
    return grads, log


@pytest.mark.parametrize('weights', [None, dict(dis=0.5, kd=2., q_dis=2.)])
def test_joint_backward_gives_each_update_its_gradient(tiny_fp_checkpoint,
                                                       weights):
    """One backward pass for both updates: the quantized model's gradient
    is the two-pass one; the generator's is that of ``ce * CE + bns * D1 -
    dis * D2 - dis * kd / q_dis * KD``."""
    extra = {} if weights is None else dict(loss_weights=weights)
    two, two_optim = _calibrated_tiny(tiny_fp_checkpoint, **extra)
    joint, joint_optim = _calibrated_tiny(tiny_fp_checkpoint,
                                          joint_backward=True, **extra)
    ref, _ = _calibrated_tiny(tiny_fp_checkpoint, **extra)
    g_two, log_two = _step_grads(two, two_optim)
    g_joint, log_joint = _step_grads(joint, joint_optim)
    q_keys = [k for k in g_two if k.startswith('quantized.')]
    assert q_keys and set(q_keys) == {
        k for k in g_joint if k.startswith('quantized.')}
    for k in q_keys:
        assert torch.allclose(g_joint[k], g_two[k], atol=1e-6, rtol=1e-4), k
    # the generator's gradient, computed directly from the same batch
    w = ref.loss_weights
    torch.manual_seed(1)
    x, labels = ref.sample_inputs(FULL['batch_size'])
    _, _, losses = ref._losses_on(x, labels, True, True)
    loss = w['ce'] * losses['loss_ce'] + w['bns'] * losses['loss_bns'] - \
        w['dis'] * losses['loss_dis'] - \
        w['dis'] * w['kd'] / w['q_dis'] * losses['loss_kd']
    g_params = dict(ref.generator.named_parameters())
    expected = torch.autograd.grad(loss, list(g_params.values()))
    moved = 0
    for (name, _), e in zip(g_params.items(), expected):
        got = g_joint['generator.' + name]
        assert torch.allclose(got, e, atol=1e-6, rtol=1e-4), name
        # and the KD term makes it differ from the two-pass gradient
        moved += not torch.allclose(got, g_two['generator.' + name],
                                    atol=1e-7, rtol=1e-5)
    assert moved
    assert torch.allclose(log_joint['loss_g'], loss.detach(), rtol=1e-5)
    assert torch.allclose(log_joint['loss_q'], log_two['loss_q'], rtol=1e-5)


def test_joint_backward_keeps_two_passes_without_q_dis(tiny_fp_checkpoint):
    """Without D2 in the quantized update the reversal has nothing to
    carry: the iteration is the two-pass one."""
    weights = dict(loss_weights=dict(q_dis=0.))
    two, two_optim = _calibrated_tiny(tiny_fp_checkpoint, **weights)
    joint, joint_optim = _calibrated_tiny(tiny_fp_checkpoint,
                                          joint_backward=True, **weights)
    g_two, _ = _step_grads(two, two_optim)
    g_joint, _ = _step_grads(joint, joint_optim)
    assert set(g_two) == set(g_joint)
    assert all(torch.equal(g_two[k], g_joint[k]) for k in g_two)


def test_quantized_model_runs_only_when_needed(tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint,
                                   loss_weights=dict(dis=0., q_dis=0.))
    model.train_step(FULL, optim)
    freeze_activations(model.quantized)
    runs = []
    model.quantized.register_forward_hook(lambda *a: runs.append(1))
    g0 = params_of(model.generator)
    log = model.train_step(dict(FULL, update_quantized=False), optim)
    # generator-only step without D2: nothing uses the quantized model
    assert not runs and 'loss_kd' not in log and 'loss_q' not in log
    assert any(not torch.equal(g0[k], v)
               for k, v in params_of(model.generator).items())
    model.train_step(FULL, optim)
    assert runs and model.calibrating() is False


def test_generator_sampled_without_graph_when_not_updated(
        tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
    graphs = []
    model.generator.register_forward_hook(
        lambda m, a, out: graphs.append(out.requires_grad))
    model.train_step(dict(FULL, update_generator=False), optim)
    model.train_step(FULL, optim)
    assert graphs == [False, True]


def test_diverged_loss_named(tiny_fp_checkpoint, monkeypatch):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
    monkeypatch.setattr(model.bns_loss, 'forward',
                        lambda *a: torch.tensor(float('nan')))
    with pytest.raises(FloatingPointError, match=r'loss_(g|bns) became nan'):
        model.train_step(FULL, optim)


def test_tapered_generator_is_smaller_at_high_resolution():
    from mmddaq.generators import Generator
    full = Generator(img_size=128, latent_dim=16, base_channels=64,
                     num_upsamples=4)
    lean = Generator(img_size=128, latent_dim=16, base_channels=64,
                     num_upsamples=4, taper_size=32)
    z, _ = full.sample_noise(2)
    assert lean(z).shape == full(z).shape == (2, 3, 128, 128)
    convs = [m for m in lean.blocks if isinstance(m, nn.Conv2d)]
    # 16 and 32 px keep 64 channels; 64 px gets 32, 128 px 16
    assert [c.out_channels for c in convs] == [64, 64, 32, 16]

    def macs(g):
        total, side = 0, g.init_hw[0]
        for m in g.blocks:
            if isinstance(m, nn.Conv2d):
                side *= 2
                total += m.weight.numel() * side * side
        return total

    assert macs(lean) < 0.4 * macs(full)


def test_upsample_conv_equals_upsample_then_conv():
    from mmddaq.generators.generator import UpsampleConv2d
    torch.manual_seed(0)
    fused = UpsampleConv2d(5, 7).double()
    plain = nn.Sequential(nn.Upsample(scale_factor=2),
                          nn.Conv2d(5, 7, 3, padding=1)).double()
    plain[1].load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 6, 4, dtype=torch.double, requires_grad=True)
    y, y_ref = fused(x), plain(x)
    assert y.shape == (2, 7, 12, 8) and torch.allclose(y, y_ref)
    w = torch.randn_like(y)
    grads = torch.autograd.grad((y * w).sum(), [x, fused.weight, fused.bias])
    refs = torch.autograd.grad((y_ref * w).sum(),
                               [x, plain[1].weight, plain[1].bias])
    for g, r in zip(grads, refs):
        assert torch.allclose(g, r)


def test_generator_loads_checkpoints_from_before_upsample_conv():
    from mmddaq.generators import Generator
    g = Generator(img_size=16, latent_dim=8, base_channels=8)
    # the old layout: (upsample, conv, BN, activation) per block
    old = {}
    for key, value in g.state_dict().items():
        if key.startswith('blocks.'):
            index, rest = key[7:].split('.', 1)
            key = f'blocks.{int(index) + 1 + int(index) // 3}.{rest}'
        old[key] = value.clone() + 1
    fresh = Generator(img_size=16, latent_dim=8, base_channels=8)
    fresh.load_state_dict(old)
    for key, value in fresh.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, g.state_dict()[key] + 1), key


def test_cpu_and_torch_kernels_give_the_same_model_outputs():
    # the whole fake-quantized model, both kernels: identical outputs
    import os.path as osp
    import sys
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))
    import fakequant_kernels
    from mmengine.config import Config

    from mmddaq.apis.cost import _build_ddaq, _calibrated
    from mmddaq.quantization import fake_quant
    cfg = Config.fromfile('configs/ddaq_resnet18-w16_digits_w4a4.py')
    cfg.model.fp_checkpoint = None
    cfg.train_cfg.batch_size = 4
    model, optim, plan = _build_ddaq(cfg)
    _calibrated(model, optim, plan)
    model.eval()
    x = torch.randn(4, *model.input_shape)
    outs = {}
    try:
        for name, kernel in fakequant_kernels.KERNELS.items():
            fake_quant.FIXED_GRID_KERNELS['cpu'] = kernel
            with torch.no_grad():
                outs[name] = model.adapter.forward(model.quantized, x)
    finally:
        fake_quant.FIXED_GRID_KERNELS['cpu'] = fake_quant.fake_quantize_cpu
    assert torch.equal(outs['torch'], outs['mmddaq'])
    # the timing tool leaves the CPU kernel in place
    times = fakequant_kernels.time_config(
        'configs/ddaq_resnet18-w16_digits_w4a4.py', repeats=1)
    assert fake_quant.FIXED_GRID_KERNELS['cpu'] is fake_quant.fake_quantize_cpu
    assert {'fp_forward', 'fakequant_forward_torch',
            'generator_iter_mmddaq'} <= set(times)


def test_lean_ops_tool_times_every_generator_block_and_bn_shape():
    import os.path as osp
    import sys
    root = osp.dirname(osp.dirname(__file__))
    sys.path.insert(0, osp.join(root, 'tools'))
    import lean_ops
    from mmengine.config import Config
    cfg = Config.fromfile(
        osp.join(root, 'configs', 'ddaq_resnet18-w16_digits_w4a4.py'))
    cfg.train_cfg.batch_size = 2
    gen = lean_ops.generator_rows(cfg, repeats=1)
    # the digits generator is tapered (taper_size=8): 32 and 16 channels
    assert [r[0].split(',')[0] for r in gen] == [
        'upsample+conv 64->32 at 16 px', 'upsample+conv 32->16 at 32 px']
    moments = lean_ops.moments_rows(cfg, repeats=1)
    assert len(moments) == 4 and all(r[1] > 0 and r[2] > 0 for r in moments)
    # the references compute the same function, and are undone afterwards
    from mmddaq.generators.generator import UpsampleConv2d
    from mmddaq.losses import bns_loss
    lean_fns = (UpsampleConv2d.forward, bns_loss.shifted_moments)
    m, x = UpsampleConv2d(3, 4), torch.randn(2, 3, 5, 5)
    shift = torch.randn(3)
    with lean_ops._Reference():
        ref_y, ref_moments = m(x), bns_loss.shifted_moments(x, shift)
    assert (UpsampleConv2d.forward, bns_loss.shifted_moments) == lean_fns
    assert torch.allclose(m(x), ref_y, atol=1e-5)
    for a, b in zip(bns_loss.shifted_moments(x, shift), ref_moments):
        assert torch.allclose(a, b, atol=1e-5)
    it = lean_ops.iteration_rows(cfg, repeats=1)
    assert len(it) == 1 and it[0][1] > 0 and it[0][2] > 0


def test_iteration_ab_references_compute_what_replaced_them():
    """tools/iteration_ab.py times the earlier mask and moments: they must
    compute the same values and gradients as the current ones."""
    import os.path as osp
    import sys
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(__file__)), 'tools'))
    import iteration_ab
    from mmddaq.losses.bns_loss import shifted_moments
    from mmddaq.quantization.fake_quant import calc_qparams, fake_quantize_cpu
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 3
    scale, zp = calc_qparams(x.min() * 0.7, x.max() * 0.6, 4, False)
    a, b = (x.clone().requires_grad_(True) for _ in range(2))
    out = fake_quantize_cpu(a, scale, zp, 0, 15)
    ref = iteration_ab.bool_mask_kernel(b, scale, zp, 0, 15)
    assert torch.equal(out, ref)
    ga, = torch.autograd.grad(out.square().sum(), a)
    gb, = torch.autograd.grad(ref.square().sum(), b)
    assert torch.equal(ga, gb)
    shift = torch.randn(3)
    w = torch.randn(3)
    a, b = (x.clone().requires_grad_(True) for _ in range(2))
    m1, v1 = shifted_moments(a, shift)
    m2, v2 = iteration_ab.autograd_moments(b, shift)
    assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(v1, v2,
                                                                 rtol=1e-5)
    ga, = torch.autograd.grad(((m1 + v1) * w).sum(), a)
    gb, = torch.autograd.grad(((m2 + v2) * w).sum(), b)
    assert torch.allclose(ga, gb, atol=1e-6)
