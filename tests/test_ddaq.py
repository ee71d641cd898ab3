"""The DDAQ components: generator, D1, D2, importance, algorithm step."""
import copy

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope
from torch import nn

from conftest import DDAQ_CONFIG, tiny_ddaq_options
from mmddaq.apis import load_config
from mmddaq.generators import Generator
from mmddaq.importance import (HessianImportance,
                               OutputSensitivityImportance,
                               UniformImportance, layer_of_each_bn,
                               limit_span, tap_weights)
from mmddaq.losses import BNStatisticsLoss, DiscrepancyLoss
from mmddaq.losses.bns_loss import bn_statistics_loss, shifted_moments
from mmddaq.losses.discrepancy_loss import normalized_mse
from mmddaq.quantization import freeze_activations, quantized_layers


def build_tiny_ddaq(fp_checkpoint, **model_overrides):
    init_default_scope('mmpretrain')
    opts = tiny_ddaq_options(fp_checkpoint)
    opts = {k: v for k, v in opts.items() if k.startswith('model.')}
    opts.update({f'model.{k}': v for k, v in model_overrides.items()})
    cfg = load_config(DDAQ_CONFIG, opts)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


def params_of(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- generator
def test_generator_shapes_and_conditioning():
    g = Generator(img_size=(16, 24), num_classes=5, latent_dim=8,
                  base_channels=8)
    z, labels = g.sample_noise(6)
    assert labels.min() >= 0 and labels.max() < 5
    x = g(z, labels)
    assert x.shape == (6, 3, 16, 24)
    # output BN without affine: roughly normalised channels in train mode
    assert x.mean().abs() < 0.1 and (x.std() - 1).abs() < 0.1
    # labels change the output
    assert not torch.allclose(g(z, labels), g(z, (labels + 1) % 5))
    with pytest.raises(ValueError, match='needs labels'):
        g(z)
    g_uncond = Generator(img_size=16, latent_dim=8, base_channels=8)
    z, labels = g_uncond.sample_noise(2)
    assert labels is None and g_uncond(z).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match='divisible'):
        Generator(img_size=30)


def test_generator_value_range_bounds_every_channel():
    low, high = Generator.pixel_range([78., 100., 20.], [83., 50., 10.])
    assert low == pytest.approx([-78 / 83, -2., -2.])
    assert high == pytest.approx([177 / 83, 3.1, 23.5])
    g = Generator(img_size=8, latent_dim=8, base_channels=8,
                  value_range=(low, high))
    # a large input scale drives tanh to both ends of its range
    with torch.no_grad():
        g.to_img[0].weight.mul_(100.)
    x = g(*g.sample_noise(16))
    per_channel = x.transpose(0, 1).flatten(1)
    lo, hi = torch.tensor(low), torch.tensor(high)
    assert (per_channel.min(1).values >= lo - 1e-5).all()
    assert (per_channel.max(1).values <= hi + 1e-5).all()
    # both ends are reached (saturated tanh), so the map spans the range
    assert (per_channel.min(1).values < lo + 0.05 * (hi - lo)).all()
    assert (per_channel.max(1).values > hi - 0.05 * (hi - lo)).all()
    # scalars broadcast; bad bounds are refused early
    assert Generator(img_size=8, base_channels=8,
                     value_range=(-1, 2)).value_range == ([-1.] * 3, [2.] * 3)
    with pytest.raises(ValueError, match='exceed'):
        Generator(img_size=8, base_channels=8, value_range=(1., 1.))
    with pytest.raises(ValueError, match='1 or 3 bounds'):
        Generator(img_size=8, base_channels=8, value_range=([0, 0], [1, 1]))
    with pytest.raises(ValueError, match=r'\(low, high\)'):
        Generator(img_size=8, base_channels=8, value_range=3.)
    with pytest.raises(ValueError, match='resolved by mmddaq.DDAQ'):
        Generator(img_size=8, base_channels=8, value_range='pixels')


def test_ddaq_pixel_range_comes_from_the_data_preprocessor(
        tiny_fp_checkpoint):
    model, _ = build_tiny_ddaq(tiny_fp_checkpoint,
                               **{'generator.value_range': 'pixels'})
    pre = model.data_preprocessor
    mean, std = pre.mean.flatten(), pre.std.flatten()
    low, high = model.generator.value_range
    assert low == pytest.approx((-mean / std).tolist())
    assert high == pytest.approx(((255 - mean) / std).tolist())
    x = model.generate(8)
    assert (x >= torch.tensor(low).view(1, -1, 1, 1) - 1e-5).all()
    assert (x <= torch.tensor(high).view(1, -1, 1, 1) + 1e-5).all()


# ---------------------------------------------------------------------- D1
class ConvBN(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def test_bns_loss_small_on_matching_batch_and_weighted():
    torch.manual_seed(0)
    model = ConvBN()
    data = torch.randn(256, 3, 8, 8) * 2 + 1
    model.train()
    for bn in (model.bn1, model.bn2):
        bn.momentum = None  # cumulative average: exact batch statistics
    with torch.no_grad():
        model(data)
    model.eval()
    loss = BNStatisticsLoss(model)
    with loss.recording():
        model(data)
    matched = float(loss())
    with pytest.raises(RuntimeError, match='saw no forward pass'):
        loss()  # the recorded moments were used up
    model(data)  # outside recording(): nothing is recorded
    with pytest.raises(RuntimeError, match='saw no forward pass'):
        loss()
    noise = torch.randn(256, 3, 8, 8)
    with loss.recording():
        model(noise)
    mismatched = float(loss())
    assert matched < 0.02 < mismatched
    # the plain function on recorded moments is the same loss
    with loss.recording() as moments:
        model(noise)
    assert set(moments) == {'bn1', 'bn2'}
    assert float(bn_statistics_loss(
        moments, dict(bn1=model.bn1, bn2=model.bn2))) == \
        pytest.approx(mismatched)
    loss.set_layer_weights({'bn1': 2.0, 'bn2': 0.0})
    with loss.recording():
        model(noise)
    weighted = float(loss())
    mean1, var1 = shifted_moments(model.conv1(noise), model.bn1.running_mean)
    assert weighted == pytest.approx(
        float(torch.norm(mean1) + torch.norm(var1 - model.bn1.running_var)),
        rel=1e-5)  # 2 * bn1's distance / 2 layers
    with pytest.raises(ValueError, match='no BatchNorm'):
        BNStatisticsLoss(nn.Sequential(nn.Conv2d(3, 3, 1)))


@pytest.mark.parametrize('shape', [(8, 4, 5, 6), (16, 3), (4, 2, 3, 3, 3)])
def test_shifted_moments_equal_var_mean(shape):
    torch.manual_seed(0)
    x = (torch.randn(*shape) * 0.5 + 3.0).double().requires_grad_(True)
    dims = [0] + list(range(2, x.dim()))
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    shift = torch.randn(shape[1]).double()
    for s in (shift, shift * 100):  # near and far from the batch mean
        mean_shift, v = shifted_moments(x, s)
        assert torch.allclose(mean_shift + s, mean.detach(), atol=1e-8)
        assert torch.allclose(v.double(), var.detach(), rtol=1e-5)
    w = torch.randn(shape[1]).double()
    g_ref, = torch.autograd.grad(((var + mean) * w).sum(), x)
    mean_shift, v = shifted_moments(x, shift)
    g, = torch.autograd.grad(((v + mean_shift) * w).sum(), x)
    assert torch.allclose(g, g_ref, atol=1e-6)


def test_shifted_moments_backward_is_the_plain_formulas():
    """The gradients equal those of the plain mean / variance formula, with
    either output alone or both, and a half input keeps its dtype."""
    torch.manual_seed(0)
    x = (torch.randn(6, 3, 4, 5) * 0.5 + 2.0).double().requires_grad_(True)
    s = torch.randn(3).double()
    assert torch.autograd.gradcheck(lambda t: shifted_moments(t, s), (x, ))
    y = x - s.view(1, -1, 1, 1)
    plain_mean = y.mean((0, 2, 3))
    plain = (plain_mean, (y * y).mean((0, 2, 3)) - plain_mean**2)
    for i in (0, 1):
        g_ref, = torch.autograd.grad(plain[i].sum(), x, retain_graph=True)
        g, = torch.autograd.grad(shifted_moments(x, s)[i].sum(), x)
        assert torch.allclose(g, g_ref, atol=1e-12)
    h = torch.randn(2, 3, 4, 4).half().requires_grad_(True)
    mean_shift, var = shifted_moments(h, torch.zeros(3))
    assert mean_shift.dtype == var.dtype == torch.float32
    (mean_shift.sum() + var.sum()).backward()
    assert h.grad.dtype == torch.float16


# ---------------------------------------------------------------------- D2
def test_discrepancy_loss():
    d2 = DiscrepancyLoss(['a', 'b'])
    fp = {'a': torch.ones(2, 3), 'b': (torch.ones(4), torch.ones(4))}
    assert float(d2(fp, copy.deepcopy(fp))) == 0
    q = {'a': torch.zeros(2, 3), 'b': (torch.ones(4), torch.ones(4))}
    per_tap = {}
    base = float(d2(fp, q, per_tap))
    assert per_tap == {'a': 1.0, 'b': 0.0} and base == pytest.approx(0.5)
    d2.set_tap_weights({'a': 2.0, 'b': 0.0})
    assert float(d2(fp, q)) == pytest.approx(1.0)


# -------------------------------------------------------------- importance
def test_importance_strategies(tiny_fp_checkpoint):
    model, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    names = [n for n, _ in quantized_layers(model.quantized)]

    def sample(n):
        return torch.randn(n, 3, 32, 32)

    for method in (HessianImportance(batch_size=4, num_batches=1,
                                     num_probes=2),
                   OutputSensitivityImportance(batch_size=4),
                   UniformImportance()):
        torch.manual_seed(0)
        imp = method(model.fp_model, model.quantized, sample, model.adapter)
        assert list(imp) == names
        assert sum(imp.values()) / len(imp) == pytest.approx(1.0)
        assert all(v >= 0 for v in imp.values())
        if not isinstance(method, UniformImportance):
            assert max(imp.values()) > 1.5 * min(imp.values())
    # the FP weights are untouched by the measurements
    ref, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    assert same(params_of(ref.fp_model), params_of(model.fp_model))


def test_bn_inherits_its_conv_and_taps(tiny_fp_checkpoint):
    model, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    x = torch.randn(2, 3, 32, 32)
    mapping = layer_of_each_bn(
        model.fp_model, lambda: model.adapter.forward(model.fp_model, x),
        [n for n, _ in quantized_layers(model.quantized)])
    assert mapping['backbone.bn1'] == 'backbone.conv1'
    assert mapping['backbone.layer2.0.bn2'] == 'backbone.layer2.0.conv2'
    assert mapping['backbone.layer2.0.downsample.1'] == \
        'backbone.layer2.0.downsample.0'
    w = tap_weights({'backbone.layer1.0.conv1': 3., 'head.fc': 1.},
                    ['backbone.layer1', 'head.fc'])
    assert w == {'backbone.layer1': 1.5, 'head.fc': 0.5}


# --------------------------------------------------------------- algorithm
def test_train_step_updates_g_and_q_never_fp(tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
    fp0, q0, g0 = (params_of(model.fp_model), params_of(model.quantized),
                   params_of(model.generator))
    calls = []
    model.fp_model.register_forward_hook(lambda *a: calls.append(1))
    plan = dict(batch_size=8, update_generator=True, update_quantized=True)
    for i in range(2):
        log = model.train_step(plan, optim)
        if i == 0:  # calibration batch; the generator meets D2 after it
            freeze_activations(model.quantized)
    assert len(calls) == 2  # FP outputs computed once per iteration
    for key in ('loss_g', 'loss_q', 'loss_bns', 'loss_ce', 'loss_dis',
                'loss_kd', 'loss_q_dis'):
        assert key in log and torch.isfinite(log[key])
    assert same(fp0, params_of(model.fp_model))
    q_weights = [k for k in q0 if k.endswith('.weight')]
    assert any(not torch.equal(q0[k], params_of(model.quantized)[k])
               for k in q_weights)
    assert not same(g0, params_of(model.generator))
    # BN statistics of both models are frozen (eval mode) while training
    assert not model.fp_model.training and not model.quantized.training
    assert model.generator.training


def test_warmup_step_leaves_quantized_weights(tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
    q0 = {k: v for k, v in params_of(model.quantized).items()
          if 'observer' not in k}
    model.train_step(
        dict(batch_size=8, update_generator=True, update_quantized=False),
        optim)
    q1 = params_of(model.quantized)
    assert same(q0, q1)
    # but activation ranges were calibrated on the batch
    assert all(m.act_quantizer.calibrated
               for _, m in quantized_layers(model.quantized))


def test_ablation_switches_remove_terms(tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(
        tiny_fp_checkpoint, loss_weights=dict(bns=0., dis=0., q_dis=0.))
    assert model.bns_loss is None
    log = model.train_step(dict(batch_size=4), optim)
    assert 'loss_bns' not in log and 'loss_dis' not in log
    assert 'loss_q_dis' not in log and 'loss_ce' in log
    with pytest.raises(ValueError, match='unknown loss_weights'):
        build_tiny_ddaq(tiny_fp_checkpoint, loss_weights=dict(beta=1.))


def test_importance_travels_in_state_dict(tiny_fp_checkpoint):
    model, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    names = [n for n, _ in quantized_layers(model.quantized)]
    imp = {n: float(i + 1) for i, n in enumerate(names)}
    model.set_layer_importance(imp)
    bn_w = model.bns_loss.layer_weights
    # BN layers inherit their conv's weight, rescaled to mean 1 over BNs
    assert bn_w['backbone.layer1.0.bn2'] / bn_w['backbone.bn1'] == \
        pytest.approx(imp['backbone.layer1.0.conv2'] /
                      imp['backbone.conv1'])
    assert sum(bn_w.values()) / len(bn_w) == pytest.approx(1.0)
    state = model.state_dict()
    fresh, _ = build_tiny_ddaq(tiny_fp_checkpoint)
    fresh.load_state_dict(state)
    assert fresh.layer_importance == pytest.approx(model.layer_importance)
    assert fresh.dis_loss.tap_weights == \
        pytest.approx(model.dis_loss.tap_weights)


def test_importance_span_is_limited(tiny_fp_checkpoint):
    names = None
    for span in (None, 10.):
        model, _ = build_tiny_ddaq(tiny_fp_checkpoint, importance_span=span)
        names = names or [n for n, _ in quantized_layers(model.quantized)]
        # one layer 3000x the others, one almost nothing
        imp = {n: 1. for n in names}
        imp[names[0]], imp[names[-1]] = 3000., 1e-3
        model.set_layer_importance(imp)
        w = model.layer_importance
        assert sum(w.values()) / len(w) == pytest.approx(1.0)
        ratio = max(w.values()) / min(w.values())
        if span is None:
            assert ratio == pytest.approx(3e6)
        else:
            assert ratio == pytest.approx(span)
            taps = model.dis_loss.tap_weights.values()
            assert max(taps) / min(taps) <= span + 1e-6
    assert limit_span({'a': 0., 'b': 0.}, 10.) == {'a': 1., 'b': 1.}
    with pytest.raises(ValueError, match='importance_span'):
        build_tiny_ddaq(tiny_fp_checkpoint, importance_span=0.5)


def test_discrepancy_denominator_is_constant():
    fp = torch.randn(4, 8, requires_grad=True)
    q = torch.randn(4, 8)
    normalized_mse(fp, q).backward()
    expected = 2 * (fp - q).detach() / fp.detach().pow(2).sum()
    assert torch.allclose(fp.grad, expected, rtol=1e-4, atol=1e-6)


def test_no_adversarial_d2_while_calibrating(tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
    assert model.calibrating()
    log = model.train_step(dict(batch_size=4, update_quantized=False), optim)
    assert 'loss_dis' not in log and 'loss_bns' in log
    freeze_activations(model.quantized)
    assert not model.calibrating()
    log = model.train_step(dict(batch_size=4, update_quantized=False), optim)
    assert 'loss_dis' in log


def test_eval_never_moves_activation_ranges(tiny_fp_checkpoint):
    model, optim = build_tiny_ddaq(tiny_fp_checkpoint)
    model.train_step(dict(batch_size=4, update_quantized=False), optim)
    before = params_of(model.quantized)
    model.eval()
    model(torch.randn(4, 3, 32, 32) * 50, mode='tensor')
    assert same(before, params_of(model.quantized))
    freeze_activations(model.quantized)


def test_fp_checkpoint_must_match(tiny_fp_checkpoint, tmp_path):
    bad = tmp_path / 'other.pth'
    state = torch.load(tiny_fp_checkpoint, weights_only=True)['state_dict']
    state.pop('head.fc.bias')
    state['extra.weight'] = torch.zeros(1)
    torch.save({'state_dict': state}, bad)
    with pytest.raises(ValueError, match='does not match the model.*missing'):
        build_tiny_ddaq(str(bad))
    with pytest.raises(FileNotFoundError):
        build_tiny_ddaq(str(tmp_path / 'missing.pth'))
