import copy

import pytest
import torch
from torch import nn

from mmddaq.quantization import (ActivationQuantizer, ModelQuantizer,
                                 QuantConv2d, QuantLinear, WeightQuantizer,
                                 calc_qparams, fake_quantize,
                                 freeze_activations, quantizable_layers,
                                 quantized_layers)
from mmddaq.registry import MODELS


class TinyNet(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def _calibrated(model, bits, seed=0, **kwargs):
    torch.manual_seed(seed)
    q = ModelQuantizer(w_bits=bits, a_bits=bits, **kwargs).quantize(model)
    q.eval()
    with torch.no_grad():
        for _ in range(3):
            q(torch.randn(4, 3, 16, 16))
    freeze_activations(q)
    return q


def test_fake_quantize_levels_and_ste():
    x = torch.linspace(-1, 1, 101, requires_grad=True)
    scale, zp = calc_qparams(x.detach().min(), x.detach().max(), 4, False)
    y = fake_quantize(x, scale, zp, 4, symmetric=False)
    assert y.detach().unique().numel() <= 16
    assert (y - x).abs().max() <= scale / 2 + 1e-6
    y.sum().backward()
    level = torch.round(x.detach() / scale + zp)
    inside = (level >= 0) & (level <= 15)  # rounds onto the grid
    assert inside.sum() > 90
    assert torch.equal(x.grad, inside.float())  # STE: 1 inside, 0 clipped
    # values outside the grid are clipped and get no gradient
    x2 = torch.tensor([-5., 0., 5.], requires_grad=True)
    fake_quantize(x2, scale, zp, 4, False).sum().backward()
    assert x2.grad.tolist() == [0., 1., 0.]


@pytest.mark.parametrize('symmetric', [True, False])
def test_weight_quantizer_per_channel(symmetric):
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)
    q = WeightQuantizer(bits=3, symmetric=symmetric)(w)
    for c in range(6):
        assert q[c].unique().numel() <= 8
    # per-channel: small channels are not crushed by the large ones
    assert (q[0] - w[0]).abs().max() < w[0].abs().max() / 2


def test_native_and_learnable_paths_agree():
    # fixed scales use torch's fused kernels, learnable ones the autograd
    # formula: same values, same gradient mask
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    scale, zp = calc_qparams(x.detach().min(), x.detach().max(), 3, False)
    a = fake_quantize(x, scale, zp, 3, False)
    b = fake_quantize(x, scale.clone().requires_grad_(True), zp, 3, False)
    assert torch.equal(a, b)
    ga, = torch.autograd.grad(a.sum(), x)
    gb, = torch.autograd.grad(b.sum(), x)
    assert torch.equal(ga, gb)


@pytest.mark.parametrize('per_channel', [False, True])
@pytest.mark.parametrize('bits,symmetric', [(4, False), (3, True),
                                            (8, False)])
def test_cpu_fake_quantize_is_torchs_kernel_bit_for_bit(
        per_channel, bits, symmetric):
    # the CPU path computes what torch.fake_quantize_* compute: values
    # (ties at half steps and clipped values included) and gradient mask
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(6, 5, 7, 7, generator=gen) * 3
    if per_channel:
        lo, hi = x.transpose(0, 1).reshape(5, -1).aminmax(dim=1)
        lo, hi = lo * 0.7, hi * 0.6  # some values outside the grid
    else:
        lo, hi = x.min() * 0.7, x.max() * 0.6
    scale, zp = calc_qparams(lo, hi, bits, symmetric)
    # exact ties: values at k + 0.5 steps from zero
    x.view(-1)[:200] = (torch.arange(200) - 100 + 0.5) * (
        scale.reshape(-1)[0] if per_channel else scale)
    x.requires_grad_(True)
    from mmddaq.quantization.fake_quant import quant_range
    qmin, qmax = quant_range(bits, symmetric)
    if per_channel:
        ref = torch.fake_quantize_per_channel_affine(
            x, scale, zp.int(), 1, qmin, qmax)
        shape = (1, -1, 1, 1)
    else:
        ref = torch.fake_quantize_per_tensor_affine(x, scale, zp.int(), qmin,
                                                    qmax)
        shape = ()
    out = fake_quantize(x, scale.reshape(shape), zp.reshape(shape), bits,
                        symmetric)
    assert torch.equal(out, ref)
    g_out, = torch.autograd.grad(out.pow(2).sum(), x)
    g_ref, = torch.autograd.grad(ref.pow(2).sum(), x)
    assert torch.equal(g_out, g_ref)
    assert 0 < (g_ref == 0).sum() < x.numel()  # both clipped and inside
    with torch.no_grad():
        assert torch.equal(fake_quantize(x, scale.reshape(shape),
                                         zp.reshape(shape), bits, symmetric),
                           ref)


@pytest.mark.parametrize('shape', [(), (1, ), (1, 1, 1, 1)])
def test_one_grid_cpu_path_takes_any_one_element_grid(shape):
    # the host-number path: values and gradient mask as PyTorch's kernel,
    # whatever the one-element grid's shape; a value that rounds to zero
    # from below may come out as -0.0 (equal as a number)
    from mmddaq.quantization.fake_quant import fake_quantize_cpu
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 5, generator=gen) * 2
    x.view(-1)[:4] = torch.tensor([-0.01, 0.01, float('inf'), -float('inf')])
    scale, zp = torch.tensor(0.3), torch.tensor(6.)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, 6, 0, 15)
    for grad in (False, True):
        xi = x.clone().requires_grad_(grad)
        out = fake_quantize_cpu(xi, scale.reshape(shape), zp.reshape(shape),
                                0, 15)
        assert torch.equal(out, ref) and out.shape == x.shape
        if grad:
            g, = torch.autograd.grad(out.sum(), xi)
            xr = x.clone().requires_grad_(True)
            gr, = torch.autograd.grad(
                torch.fake_quantize_per_tensor_affine(xr, scale, 6, 0,
                                                      15).sum(), xr)
            assert torch.equal(g, gr)
        else:
            assert out.grad_fn is None


def test_learnable_step_gets_gradient():
    w = torch.randn(4, 8, requires_grad=True)
    wq = WeightQuantizer(bits=4, learnable=True)
    wq.init_from(w)
    wq(w).pow(2).sum().backward()
    assert wq.scale.grad is not None and wq.scale.grad.abs().sum() > 0
    aq = ActivationQuantizer(bits=4, learnable=True)
    aq(torch.randn(8, 4))
    aq.freeze()
    aq(torch.randn(8, 4)).pow(2).sum().backward()
    assert aq.scale.grad is not None and aq.scale.grad.abs() > 0


def test_activation_quantizer_calibrate_then_freeze():
    aq = ActivationQuantizer(bits=8, momentum=0.9)
    aq(torch.full((4, ), 2.))
    aq.step()
    aq(torch.full((4, ), -2.) * torch.tensor([1., 0, 0, 0]) + 1)
    aq.step()
    lo, hi = aq.observer.min_val.item(), aq.observer.max_val.item()
    assert lo == pytest.approx(0.9 * 2 + 0.1 * -1)
    aq.freeze()
    aq(torch.full((4, ), 100.))
    assert aq.observer.min_val.item() == lo
    assert aq.observer.max_val.item() == hi


def test_several_calls_per_batch_count_as_one_batch():
    # a layer shared by several inputs (FPN levels) sees them all before the
    # iteration ends: the batch range covers every call
    aq = ActivationQuantizer(bits=8, momentum=0.9)
    aq(torch.tensor([0., 1.]))
    aq(torch.tensor([-3., 10.]))
    aq.step()
    assert aq.observer.min_val.item() == -3.
    assert aq.observer.max_val.item() == 10.
    assert aq.observer.num_batches.item() == 1
    aq(torch.tensor([0., 20.]))
    aq(torch.empty(0))  # e.g. an image without RoIs: ignored
    aq.freeze()  # closes the pending batch
    assert aq.observer.max_val.item() == pytest.approx(0.9 * 10 + 0.1 * 20)


def test_frozen_without_calibration_raises():
    aq = ActivationQuantizer(bits=4)
    aq.layer_name = 'backbone.conv1'
    with pytest.raises(RuntimeError, match='backbone.conv1.*calibrat'):
        aq.freeze()
    aq.frozen.fill_(True)  # e.g. a state_dict loaded from a broken run
    with pytest.raises(RuntimeError, match='no calibrated range'):
        aq(torch.randn(3))


@pytest.mark.parametrize('bits', [0, 1, 9, 12, 32, 4.0, '4'])
def test_unsupported_bits(bits):
    with pytest.raises(ValueError, match='Unsupported'):
        ModelQuantizer(w_bits=bits)
    with pytest.raises(ValueError, match='Unsupported'):
        ActivationQuantizer(bits=bits)


def test_swap_counts_and_skip():
    model = TinyNet()
    n_float = len(quantizable_layers(model))
    q = ModelQuantizer(skip=['conv2']).quantize(model)
    assert len(quantized_layers(q)) == n_float - 1
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.fc, QuantLinear)
    assert type(q.conv2) is nn.Conv2d
    # the original model is untouched
    assert not quantized_layers(model)


def test_policy_first_last_overrides_and_layer_bits():
    model = TinyNet()
    plan = ModelQuantizer(
        w_bits=4, a_bits=4, first_last_bits=8,
        overrides=[dict(pattern='conv2', a_bits=6)]).plan(model)
    assert plan == {'conv1': (8, 8), 'conv2': (4, 6), 'fc': (8, 8)}
    plan = ModelQuantizer(layer_bits={'conv2': (2, 3)}).plan(model)
    assert plan['conv2'] == (2, 3) and plan['conv1'] == (4, 8)


def test_input_bits_rule():
    """The image (first layer's input) is 8-bit by default, its weights
    keep ``w_bits``; ``None`` gives it ``a_bits``; later rules win."""
    model = TinyNet()
    plan = ModelQuantizer(w_bits=3, a_bits=3).plan(model)
    assert plan == {'conv1': (3, 8), 'conv2': (3, 3), 'fc': (3, 3)}
    plan = ModelQuantizer(w_bits=3, a_bits=3, input_bits=None).plan(model)
    assert plan['conv1'] == (3, 3)
    assert ModelQuantizer(input_bits=16).plan(model)['conv1'] == (4, 16)
    # at least input_bits: a float (16) or wider default stays as it is
    assert ModelQuantizer(w_bits=16, a_bits=16).plan(model)['conv1'] == \
        (16, 16)
    plan = ModelQuantizer(
        input_bits=6, overrides=[dict(pattern='conv1', a_bits=5)]).plan(model)
    assert plan['conv1'] == (4, 5)
    assert ModelQuantizer(first_last_bits=2).plan(model)['conv1'] == (2, 2)
    q = ModelQuantizer(w_bits=3, a_bits=3).quantize(model)
    assert q.conv1.a_bits == 8 and q.conv1.w_bits == 3 and q.conv2.a_bits == 3
    with pytest.raises(ValueError, match='input bit-width'):
        ModelQuantizer(input_bits=1)


def test_bad_policies():
    with pytest.raises(ValueError, match='"layer9.*" matches no'):
        ModelQuantizer(overrides=[dict(pattern='layer9.*',
                                       w_bits=8)]).plan(TinyNet())
    with pytest.raises(ValueError, match='skip pattern "nope"'):
        ModelQuantizer(skip=['nope']).plan(TinyNet())
    with pytest.raises(ValueError, match='nothing is left'):
        ModelQuantizer(skip=['*']).plan(TinyNet())
    with pytest.raises(ValueError, match='no nn.Conv2d or nn.Linear'):
        ModelQuantizer().quantize(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


def test_16_bits_is_exact_and_8_bits_close():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ref = model(x)
        q16 = ModelQuantizer(w_bits=16, a_bits=16).quantize(model).eval()
        assert torch.equal(q16(x), ref)
    q8 = _calibrated(model, 8)
    with torch.no_grad():
        rel = (q8(x) - ref).norm() / ref.norm()
    assert rel < 0.05
    q4 = _calibrated(model, 4)
    with torch.no_grad():
        rel4 = (q4(x) - ref).norm() / ref.norm()
    assert rel4 > rel  # fewer bits, more error


def test_ste_gradients_at_w4a4():
    q = _calibrated(TinyNet(), 4)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    q(x).pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, layer in quantized_layers(q):
        assert layer.weight.grad is not None, name
        assert layer.weight.grad.abs().sum() > 0, name


def test_state_dict_roundtrip(tmp_path):
    q = _calibrated(TinyNet(), 4, weight_quantizer=dict(learnable=True),
                    act_quantizer=dict(learnable=True))
    path = tmp_path / 'q.pth'
    torch.save(q.state_dict(), path)
    fresh = ModelQuantizer(
        w_bits=4, a_bits=4, weight_quantizer=dict(learnable=True),
        act_quantizer=dict(learnable=True)).quantize(TinyNet()).eval()
    fresh.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), q(x))
    for a, b in zip(q.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert all(
        bool(m.act_quantizer.frozen) for _, m in quantized_layers(fresh))


def test_registered_for_configs():
    mq = MODELS.build(dict(type='mmddaq.ModelQuantizer', w_bits=3, a_bits=3))
    assert isinstance(mq, ModelQuantizer) and mq.w_bits == 3
    q = mq.quantize(copy.deepcopy(TinyNet()))
    assert q.conv1.w_bits == 3


# ------------------------------------------------- no repeated device reads
def test_host_value_follows_in_place_changes():
    from mmddaq.quantization.observers import host_value
    cache = {}
    t = torch.tensor(3)
    assert host_value(t, cache, 'n') == 3
    t.fill_(5)
    assert host_value(t, cache, 'n') == 5
    t.copy_(torch.tensor(7))
    assert host_value(t, cache, 'n') == 7
    assert host_value(torch.tensor(9), cache, 'n') == 9


def test_weight_cache_only_without_autograd_and_follows_updates():
    from mmddaq.quantization import WeightQuantizer
    q = WeightQuantizer(bits=4)
    w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
    with torch.no_grad():
        a = q(w)
        assert q(w) is a  # reused while the weight is unchanged
        w.add_(0.5)  # what an optimizer step does
        b = q(w)
    assert b is not a and torch.equal(b, q._fake_quantize(w.detach()))
    out = q(w)  # with autograd: a fresh, differentiable result
    assert out.requires_grad
    out.sum().backward()
    assert w.grad is not None


def test_frozen_activation_qparams_follow_loaded_ranges():
    from mmddaq.quantization import ActivationQuantizer
    q = ActivationQuantizer(bits=4)
    q(torch.linspace(-1, 1, 100))
    q.freeze()
    x = torch.linspace(-3, 3, 50)
    first = q(x)
    assert torch.equal(q(x), first)
    other = ActivationQuantizer(bits=4)
    other(torch.linspace(-3, 3, 100))
    other.freeze()
    q.load_state_dict(other.state_dict())
    # the cached step size of the old range must not survive the load
    assert torch.equal(q(x), other(x))
    assert not torch.equal(q(x), first)
    q.calibrate()
    assert not q.is_frozen()
