"""The quantization engine: range estimators, learned steps, learned
rounding, bias correction and block reconstruction."""
import copy

import pytest
import torch
from torch import nn

from mmddaq.export import (build_export_network, compare_outputs,
                           export_network, integer_weight,
                           onnxruntime_session, run_onnxruntime)
from mmddaq.quantization import (ActivationQuantizer, AdaRoundQuantizer,
                                 BlockReconstruction, ModelQuantizer,
                                 WeightQuantizer, calibrate_activations,
                                 correct_bias, freeze_activations,
                                 observation_disabled, quantized_layers,
                                 step_activation_observers)
from mmddaq.quantization.observers import (MSEObserver, lp_range_search,
                                           minmax)
from mmddaq.quantization.reconstruction import (ReconstructionState,
                                                reconstruction_units,
                                                site_weights)


def heavy_tailed(n=20000, seed=0):
    """Cubes of normal samples: a bulk near 0 and a long tail (max ~60)."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=gen)**3).reshape(20, -1)


def calibrated_range(observer_cfg, batches, bits=4):
    q = ActivationQuantizer(bits=bits, observer=observer_cfg)
    for x in batches:
        q(x)
        q.step()
    q.freeze()
    return q.observer.min_val.item(), q.observer.max_val.item(), q


def fq_error(q, x):
    with torch.no_grad():
        return float((q(x) - x).pow(2).mean())


@pytest.mark.parametrize('observer', [
    dict(type='mmddaq.MSEObserver'),
    dict(type='mmddaq.PercentileObserver', percentile=99.9)
])
def test_observer_choice_changes_activation_range(observer):
    torch.manual_seed(0)  # the observers subsample at random
    batches = [heavy_tailed(seed=s) for s in range(3)]
    _, hi_minmax, q_minmax = calibrated_range(None, batches)
    _, hi, q = calibrated_range(observer, batches)
    assert hi_minmax > 20
    # the tail no longer sets the range alone: it shrinks
    assert hi < 0.75 * hi_minmax
    x = heavy_tailed(seed=7)
    assert fq_error(q, x) < 0.75 * fq_error(q_minmax, x)


def test_mse_search_never_worse_than_minmax():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(8, 500, generator=gen) * torch.rand(8, 1,
                                                           generator=gen)
    lo, hi = rows.min(1).values, rows.max(1).values
    lo2, hi2 = lp_range_search(rows, lo, hi, bits=3, symmetric=False, p=2.)
    assert (hi2 <= hi + 1e-6).all() and (lo2 >= lo - 1e-6).all()
    from mmddaq.quantization.observers import _fake_quant_error
    e_full = _fake_quant_error(rows, lo, hi, 3, False, 2.)
    e_best = _fake_quant_error(rows, lo2, hi2, 3, False, 2.)
    assert (e_best <= e_full + 1e-9).all() and (e_best < e_full).any()


def test_mse_weight_quantizer_clips_per_channel_and_keeps_state():
    torch.manual_seed(0)
    weight = torch.randn(6, 64, 3, 3)
    weight[0, 0, 0, 0] = 12.  # one outlier channel
    plain = WeightQuantizer(bits=4)
    plain.init_from(weight)
    searched = WeightQuantizer(bits=4, observer=dict(type='mmddaq.MSEObserver'))
    searched.init_from(weight)
    assert plain.clip_ratio.numel() == 0
    assert searched.clip_ratio.shape == (2, 6)
    assert (searched.clip_ratio <= 1 + 1e-6).all()
    assert searched.clip_ratio[1, 0] < 0.9  # the outlier channel is clipped
    err = lambda q: float((q(weight) - weight).pow(2).sum())  # noqa: E731
    assert err(searched) < err(plain)
    # the ratio travels in the state dict into a quantizer built plainly
    fresh = WeightQuantizer(bits=4, observer=dict(type='mmddaq.MSEObserver'))
    fresh.load_state_dict(searched.state_dict())
    assert torch.equal(fresh(weight), searched(weight))


def test_lsq_activation_step_receives_gradient_and_bakes_exactly():
    q = ActivationQuantizer(bits=4)
    x = torch.randn(64, 8) * 2
    q(x)
    q.freeze()
    before = q(x).detach()
    step = q.start_step_learning()
    assert step.requires_grad
    y = q(x.requires_grad_())
    (y - x.detach() * 0.5).pow(2).sum().backward()
    assert step.grad is not None and step.grad.abs() > 0
    assert torch.allclose(q(x), before)
    with torch.no_grad():
        step.mul_(0.8)
    learned = q(x).detach()
    q.bake_learned_step()
    assert q.scale is None and not q.learnable
    assert torch.allclose(q(x), learned, atol=1e-6)


def test_lsq_scales_get_their_own_param_group():
    from mmengine.optim import build_optim_wrapper
    model = ModelQuantizer(w_bits=4, a_bits=4,
                           act_quantizer=dict(learnable=True)).quantize(
                               nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(),
                                             nn.Conv2d(4, 2, 1)))
    wrapper = build_optim_wrapper(
        model,
        dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
             paramwise_cfg=dict(custom_keys={
                 'act_quantizer.scale': dict(lr_mult=0.01, decay_mult=0.)
             })))
    groups = wrapper.optimizer.param_groups
    scale_ids = {id(m.act_quantizer.scale)
                 for _, m in quantized_layers(model)}
    scale_groups = [g for g in groups if id(g['params'][0]) in scale_ids]
    assert len(scale_groups) == 2
    assert all(g['lr'] == pytest.approx(1e-3) and g['weight_decay'] == 0
               for g in scale_groups)


def test_adaround_converges_to_hard_rounding():
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3)
    wq = WeightQuantizer(bits=4)
    ada = AdaRoundQuantizer(wq, weight)
    # at the start the soft weight is the weight (but for the grid's ends)
    soft_err = (ada(weight) - weight).abs().mean()
    assert soft_err < 0.25 * (wq(weight) - weight).abs().mean()
    opt = torch.optim.Adam([ada.alpha], lr=0.05)
    start = float(ada.regularizer(2.))
    for _ in range(300):
        opt.zero_grad()
        ada.regularizer(2.).backward()
        opt.step()
    assert float(ada.regularizer(2.)) < 0.01 * start
    h = ada.soft_offset()
    assert ((h < 1e-3) | (h > 1 - 1e-3)).float().mean() > 0.99
    soft = ada(weight).detach()
    ada.hard = True
    assert torch.allclose(ada(weight), soft, atol=1e-3 * float(ada.scale.max()))


class ShiftedConvNet(nn.Module):

    def __init__(self, bias=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(6) if not bias else nn.Identity()
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _quantize(model, bits=8, batches=(), a_bits=None, **kwargs):
    """``bits``-bit weights (activations ``a_bits``, default the same; the
    first layer's input too), activations calibrated on ``batches``."""
    kwargs.setdefault('input_bits', None)
    q = ModelQuantizer(w_bits=bits, a_bits=bits if a_bits is None else a_bits,
                       **kwargs).quantize(model).eval()
    calibrate_activations(q)
    with torch.no_grad():
        for x in batches:
            q(x)
            step_activation_observers(q)
    freeze_activations(q)
    return q


def _w3a8(fp, batches, **kwargs):
    """3-bit weights, 8-bit activations: the weights' rounding decides the
    error."""
    return _quantize(copy.deepcopy(fp), 3, batches, a_bits=8, **kwargs)


def _channel_means(module, model, x):
    out = []
    h = module.register_forward_hook(
        lambda m, a, o: out.append(o.mean((0, 2, 3))))
    with torch.no_grad(), observation_disabled(model):
        model(x)
    h.remove()
    return out[0]


@pytest.mark.parametrize('bias', [True, False])
def test_bias_correction_removes_a_mean_shift(bias):
    torch.manual_seed(0)
    fp = ShiftedConvNet(bias).eval()
    # inputs with a non-zero mean, so a weight error shifts output means
    batches = [torch.randn(16, 3, 8, 8) + 1 for _ in range(3)]
    q = _quantize(copy.deepcopy(fp), 8, batches)
    with torch.no_grad():  # a synthetic per-channel weight error
        q.conv.weight.add_(torch.linspace(-1, 1, 6).reshape(-1, 1, 1, 1) /
                           20)
    x = torch.randn(64, 3, 8, 8) + 1
    target = q.bn if not bias else q.conv
    fp_target = fp.bn if not bias else fp.conv
    gap = lambda: (_channel_means(target, q, x) -  # noqa: E731
                   _channel_means(fp_target, fp, x)).abs().max()
    assert gap() > 0.3
    shifts = correct_bias(fp, q, lambda m, b: m(b), batches)
    assert 'conv' in shifts
    assert gap() < 0.05
    # nothing was added to the model: same keys as before
    assert set(q.state_dict()) == set(
        _quantize(copy.deepcopy(fp), 8, batches).state_dict())


class TinyResNet(nn.Module):
    """Stem, two residual blocks (one with a downsample), classifier."""

    def __init__(self):
        super().__init__()
        from mmpretrain.models.backbones.resnet import BasicBlock
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = BasicBlock(8, 8)
        self.block2 = BasicBlock(
            8, 16, stride=2,
            downsample=nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False),
                                     nn.BatchNorm2d(16)))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


def _trained_tiny_resnet():
    torch.manual_seed(0)
    model = TinyResNet()
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(32, 3, 12, 12))
    return model.eval()


def test_reconstruction_units_are_blocks_and_loose_layers():
    q = ModelQuantizer().quantize(_trained_tiny_resnet())
    assert reconstruction_units(q) == ['stem.0', 'block1', 'block2', 'fc']


def test_reconstruction_lowers_block_error_and_exports_exactly(tmp_path):
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(32, 3, 12, 12, generator=gen) for _ in range(4)]
    q = _quantize(copy.deepcopy(fp), 3, batches)
    x = torch.randn(64, 3, 12, 12, generator=gen)
    with torch.no_grad(), observation_disabled(q):
        err_before = float((q(x) - fp(x)).pow(2).mean())
    keys = set(q.state_dict())
    results = BlockReconstruction(iters=150, batch_size=16)(
        fp, q, lambda m, b: m(b), batches)
    assert [r['name'] for r in results] == ['stem.0', 'block1', 'block2',
                                           'fc']
    for r in results:  # never worse; the residual blocks improve
        assert r['error_after'] <= r['error_before'], r
        if r['name'].startswith('block'):
            assert r['kept'] and r['error_after'] < r['error_before'], r
    with torch.no_grad(), observation_disabled(q):
        reference = q(x)
        assert float((reference - fp(x)).pow(2).mean()) < err_before
    # the model keeps its structure: loads into a plainly quantized copy
    assert set(q.state_dict()) == keys
    fresh = _quantize(copy.deepcopy(fp), 3, batches[:1])
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad(), observation_disabled(fresh):
        assert torch.equal(fresh(x), reference)
    # rounded weights lie exactly on their fixed grid, and export keeps them
    kept = [r['name'] for r in results if r['kept']]
    for name, layer in quantized_layers(q):
        if not any(name == k or name.startswith(k + '.') for k in kept):
            continue
        assert layer.weight_quantizer.fixed_scale.numel()
        levels, scale, zp, _ = integer_weight(layer, name)
        shape = (-1, ) + (1, ) * (layer.weight.dim() - 1)
        assert torch.equal((levels - zp.reshape(shape)) * scale.reshape(shape),
                           layer.weight_quantizer(layer.weight))
    export_net, _ = build_export_network(q, x)
    with torch.no_grad():
        assert torch.allclose(export_net(x), reference, atol=1e-5)
    out = str(tmp_path / 'recon.onnx')
    export_network(q, out, (3, 12, 12))
    session = onnxruntime_session(out, optimize=False, quantize_bias=False)
    diff = compare_outputs([reference], run_onnxruntime(session, x))
    assert diff['max_abs_diff'] <= 1e-4 * diff['output_range'] + 1e-5, diff


def test_qdrop_keeps_some_activations_in_float():
    q = ActivationQuantizer(bits=2)
    x = torch.linspace(-1, 1, 10000)
    q(x)
    q.freeze()
    quantized = q(x)
    q.drop_prob = 0.5
    mixed = q(x)
    kept = (mixed == x) & (quantized != x)
    assert 0.4 < kept.float().mean() < 0.6
    q.drop_prob = 0.
    assert torch.equal(q(x), quantized)


def test_minmax_helper_unchanged():
    x = torch.tensor([[1., -2.], [3., 4.]])
    lo, hi = minmax(x, 0)
    assert lo.tolist() == [-2., 3.] and hi.tolist() == [1., 4.]
    assert isinstance(MSEObserver(), nn.Module)


def test_post_training_hook_end_to_end(tiny_fp_checkpoint, tmp_path):
    """Genie-style on the tiny digits model: the saved checkpoint is the
    reconstructed model, and the benchmark's qdrop-real runs on real
    images."""
    from conftest import DDAQ_CONFIG, tiny_ddaq_options
    from mmddaq.apis import load_config, test_checkpoint, train_and_test
    from mmddaq.apis.baselines import derive_method
    opts = tiny_ddaq_options(tiny_fp_checkpoint, max_iters=3, warmup=1,
                             calib=2)
    cfg = load_config(DDAQ_CONFIG, opts)
    cfg.custom_hooks = cfg.custom_hooks + [
        dict(type='mmddaq.PostTrainingHook', num_samples=16, batch_size=8,
             observers=dict(weight=dict(type='mmddaq.MSEObserver'),
                            act=dict(type='mmddaq.MSEObserver')),
             bias_correction=True,
             reconstruction=dict(type='mmddaq.BlockReconstruction', iters=4,
                                 batch_size=4),
             output_tuning=dict(type='mmddaq.OutputTuning', iters=2))
    ]
    metrics = train_and_test(cfg, str(tmp_path / 'run'), 'run')
    with open(tmp_path / 'run' / 'last_checkpoint') as f:
        ckpt = f.read().strip()
    again = test_checkpoint(load_config(DDAQ_CONFIG, opts), ckpt,
                            str(tmp_path / 'test'), 'test')
    assert again['accuracy/top1'] == metrics['accuracy/top1']
    assert list((tmp_path / 'run').rglob('reconstruction_error.png'))
    # the progress file goes once the result is saved
    assert not list((tmp_path / 'run').rglob('reconstruction_state.pth*'))
    state = __import__('torch').load(ckpt, weights_only=False)['state_dict']
    assert any(k.endswith('weight_quantizer.fixed_scale') and v.numel()
               for k, v in state.items())
    for method in ('ptq-mse', 'genie', 'qdrop-real', 'ddaq-kd'):
        derived = derive_method(cfg, method)
        kinds = [h['type'].split('.')[-1] for h in derived.custom_hooks]
        assert ('PostTrainingHook' in kinds) == (method != 'ddaq-kd'), method
    real = derive_method(cfg, 'qdrop-real')
    hook = real.custom_hooks[-1]
    hook.update(num_samples=8, batch_size=8,
                reconstruction=dict(type='mmddaq.BlockReconstruction',
                                    iters=2, batch_size=4))
    real.train_cfg.update(max_iters=2, warmup_iters=2, val_interval=2)
    real.custom_hooks[0]['calib_iters'] = 2
    assert 0 <= train_and_test(real, str(tmp_path / 'real'),
                               'real')['accuracy/top1'] <= 100


@pytest.mark.parametrize('bias_lr,lsq', [(None, False), (1e-3, False),
                                         (None, True)])
def test_a_unit_made_worse_is_put_back(monkeypatch, bias_lr, lsq):
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(2)]
    # lsq: the config learns the activation steps itself
    q = _quantize(copy.deepcopy(fp), 4, batches,
                  act_quantizer=dict(learnable=lsq))
    before = {k: v.clone() for k, v in q.state_dict().items()}

    def round_everything_down(self, unit, records, groups, rounders,
                              weights=None):
        with torch.no_grad():
            for _, ada in rounders:
                ada.alpha.fill_(-20.)  # floor: worse than nearest
            for group in groups[1:]:
                for step in group['params']:
                    step.mul_(3.)  # far too coarse activation steps

    monkeypatch.setattr(BlockReconstruction, '_optimise',
                        round_everything_down)
    results = BlockReconstruction(iters=1, bias_lr=bias_lr)(
        fp, q, lambda m, b: m(b), batches)
    assert not any(r['kept'] for r in results)
    after = q.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_new_weight_observer_drops_cached_weights():
    torch.manual_seed(0)
    weight = torch.randn(4, 64)
    weight[0, 0] = 10.
    wq = WeightQuantizer(bits=3)
    with torch.no_grad():
        plain = wq(weight)  # cached while autograd is off
    wq.observer_cfg = dict(type='mmddaq.MSEObserver')
    wq.init_from(weight)
    with torch.no_grad():
        assert not torch.equal(wq(weight), plain)


def test_site_weights_equalise_each_call_sites_output_scale():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(8, 4, generator=gen)
    records = [(small, [small], 0), (small, [10 * small], 1),
               (small, [small], 0), (small, [10 * small], 1)]
    w = site_weights(records)
    assert w[0] / w[1] == pytest.approx(100., rel=1e-5)
    energy = {s: float(t[0].pow(2).sum(1).mean()) * w[s]
              for _, t, s in records}
    assert energy[0] == pytest.approx(energy[1], rel=1e-5)
    # one call site: nothing changes
    assert site_weights(records[::2]) == {0: 1.}
    # the scale is per output element: a level with fewer positions but
    # the same magnitude gets the same weight
    wide, narrow = torch.ones(8, 4, 16), torch.ones(8, 4, 1)
    w = site_weights([(wide, [wide], 0), (narrow, [narrow], 1)])
    assert w[0] == pytest.approx(w[1])


def _conv_relu_head():
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                         nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1)).eval()


def test_capture_keeps_a_units_output_from_a_later_inplace_relu():
    from mmddaq.quantization.reconstruction import _capture
    fp = _conv_relu_head()
    gen = torch.Generator().manual_seed(7)
    batches = [torch.randn(4, 3, 6, 6, generator=gen) for _ in range(3)]
    q = _quantize(copy.deepcopy(fp), 4, batches)
    records = _capture(fp, q, fp[0], q[0], lambda m, b: m(b), batches)
    for (_, target, *_), x in zip(records, batches):
        expected = fp[0](x)
        assert (expected < 0).any()
        assert torch.equal(target[0], expected.detach())


def test_capture_stops_each_forward_after_the_units_last_call():
    from mmddaq.quantization.reconstruction import _capture
    fp = _SharedConv().eval()
    gen = torch.Generator().manual_seed(8)
    batches = [torch.randn(4, 8, 6, 6, generator=gen) for _ in range(3)]
    q = _quantize(copy.deepcopy(fp), 4, batches)
    ran_after = []

    def forward(model, x):
        out = model(x)
        ran_after.append(1)  # reached only if the forward was not stopped
        return out

    def full_forward(model, x, reference=None):  # never stopped
        return model(x)

    stopped = _capture(fp, q, fp.conv, q.conv, forward, batches)
    full = _capture(fp, q, fp.conv, q.conv, full_forward, batches)
    assert len(ran_after) == 2  # both models' first batch, to count calls
    assert [r[2] for r in stopped] == [0, 1] * 3
    for a, b in zip(stopped, full):
        assert torch.equal(a[0], b[0]) and a[2] == b[2]
        assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_conv_modules_are_reconstruction_units():
    from mmcv.cnn import ConvModule
    model = nn.Sequential(
        ConvModule(3, 4, 3, padding=1, act_cfg=dict(type='ReLU')),
        nn.Conv2d(4, 2, 1))
    q = ModelQuantizer().quantize(model)
    assert reconstruction_units(q) == ['0', '1']


class _SharedConv(nn.Module):
    """One conv run on a fine and a 30x larger coarse input, like a
    detection head conv shared by FPN levels."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.conv(x).flatten(1),
                          self.conv(30 * x).flatten(1)], 1)


def _fine_level_error(balance):
    fp = _SharedConv().eval()
    gen = torch.Generator().manual_seed(4)
    batches = [torch.randn(16, 8, 6, 6, generator=gen) for _ in range(4)]
    # 3-bit weights, 8-bit activations: the weights' rounding decides
    q = _w3a8(fp, batches)
    torch.manual_seed(5)
    BlockReconstruction(iters=300, batch_size=16, drop_prob=0.,
                        learn_act_steps=False, balance_sites=balance)(
                            fp, q, lambda m, b: m(b), batches)
    half = 8 * 6 * 6
    with torch.no_grad(), observation_disabled(q):
        err = [float((q(x)[:, :half] - fp(x)[:, :half]).pow(2).mean())
               for x in batches]
    return sum(err)


def test_balanced_sites_favour_the_fine_level_of_a_shared_conv():
    assert _fine_level_error(True) < _fine_level_error(False)


def test_holdout_fits_on_the_first_batches_and_judges_on_the_rest(
        monkeypatch):
    fp = _SharedConv().eval()
    gen = torch.Generator().manual_seed(9)
    batches = [torch.randn(4, 8, 6, 6, generator=gen) for _ in range(4)]
    q = _quantize(copy.deepcopy(fp), 4, batches)
    fitted = []
    original = BlockReconstruction._optimise

    def spy(self, unit, records, *args, **kwargs):
        fitted.append([r[0] for r in records])
        return original(self, unit, records, *args, **kwargs)

    monkeypatch.setattr(BlockReconstruction, '_optimise', spy)
    [result] = BlockReconstruction(iters=5, batch_size=4, holdout=0.25)(
        fp, q, lambda m, b: m(b), batches)
    # two calls per forward: 3 batches x 2 sites fitted, the last judged
    assert len(fitted[0]) == 6
    assert all(torch.equal(x, batches[i // 2] * (30 if i % 2 else 1))
               for i, x in enumerate(fitted[0]))
    assert 'error_before' in result
    with pytest.raises(ValueError, match='holdout'):
        BlockReconstruction(holdout=1.)


def test_focus_weights_pool_the_map_and_average_to_one():
    from mmddaq.quantization.reconstruction import focus_weights
    focus = torch.full((2, 1, 8, 8), 0.1)
    focus[0, 0, :2, :2] = 1.1
    w = focus_weights(focus, torch.zeros(2, 3, 4, 4))
    assert w.shape == (2, 1, 4, 4)
    assert torch.allclose(w.mean((2, 3)), torch.ones(2, 1))
    assert w[0, 0, 0, 0] > w[0, 0, 3, 3]
    assert torch.allclose(w[1], torch.ones(1, 4, 4))
    assert focus_weights(focus, torch.zeros(2, 3)) is None  # no positions
    assert focus_weights(None, torch.zeros(2, 3, 4, 4)) is None


def _one_conv_w3a8():
    """(FP one-conv model, its pool, its W3A8 copy) for the tests where
    only the top-left 2x2 corner of the output should count."""
    fp = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1)).eval()
    torch.manual_seed(10)
    nn.init.normal_(fp[0].weight)
    gen = torch.Generator().manual_seed(11)
    batches = [torch.randn(8, 3, 8, 8, generator=gen) for _ in range(4)]
    return fp, batches, _w3a8(fp, batches, first_last_bits=None)


def _corner_error(fp, q, batches):
    with torch.no_grad(), observation_disabled(q):
        return sum(float((q(x) - fp(x))[:, :, :2, :2].pow(2).mean())
                   for x in batches)


def _object_corner_error(focus):
    fp, batches, q = _one_conv_w3a8()

    def score_map(out, x):  # the "object": the top-left 2x2 corner
        m = torch.zeros(len(x), 1, 8, 8)
        m[:, :, :2, :2] = 1.
        return m

    torch.manual_seed(12)
    BlockReconstruction(iters=300, batch_size=8, drop_prob=0.,
                        learn_act_steps=False, focus=focus)(
                            fp, q, lambda m, b: m(b), batches, score_map)
    return _corner_error(fp, q, batches)


def test_focus_favours_the_positions_where_the_fp_model_sees_objects():
    assert _object_corner_error(0.01) < _object_corner_error(None)
    with pytest.raises(ValueError, match='score map'):
        BlockReconstruction(iters=1, focus=0.1)(
            nn.Identity(), nn.Identity(), lambda m, b: m(b),
            [torch.zeros(1, 1)])


def _records(sizes, site=0, focus=True):
    """Records whose inputs number their rows globally (row k holds k)."""
    records, start = [], 0
    for n in sizes:
        x = torch.arange(start, start + n, dtype=torch.float)
        x = x.reshape(n, 1, 1, 1).expand(n, 2, 3, 3).contiguous()
        records.append((x, [x * 2], site,
                        x[:, :1].clone() if focus else None))
        start += n
    return records


def test_record_sampler_draws_distinct_samples_across_pool_batches():
    from mmddaq.quantization.reconstruction import RecordSampler
    torch.manual_seed(0)
    records = _records([4, 4, 4]) + [
        (torch.zeros(4, 2, 5, 5), [torch.zeros(4, 2, 5, 5)], 1, None)]
    draw = RecordSampler(records, batch_size=6)
    seen_batches = set()
    for _ in range(40):
        x, (target, ), site, focus, fp_x = draw()
        assert fp_x is None  # these records hold no FP inputs
        if site == 1:  # another call site: its own shape, never mixed
            assert x.shape == (4, 2, 5, 5) and focus is None
            continue
        ids = x[:, 0, 0, 0].long().tolist()
        assert len(ids) == 6 and len(set(ids)) == 6  # no repeats
        # inputs, targets and focus maps stay row-aligned
        assert torch.equal(target, x * 2) and torch.equal(focus, x[:, :1])
        seen_batches.update(i // 4 for i in ids)
    assert seen_batches == {0, 1, 2}
    # without mixing: rows of one pool batch, drawn with replacement
    draw = RecordSampler(records[:3], batch_size=6, mix=False)
    for _ in range(10):
        ids = draw()[0][:, 0, 0, 0].long()
        assert len(ids) == 4 and len(set((ids // 4).tolist())) == 1


def test_constant_rounding_lr_decides_more_rounding_in_few_steps():
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(2)]
    undecided = {}
    for decay in (True, False):
        torch.manual_seed(0)
        q = _quantize(copy.deepcopy(fp), 3, batches)
        results = BlockReconstruction(
            iters=40, batch_size=16, round_lr=0.05, round_lr_decay=decay,
            learn_act_steps=False, drop_prob=0.)(
                fp, q, lambda m, b: m(b), batches)
        undecided[decay] = sum(r['undecided'] for r in results)
        assert all(0. <= r['undecided'] <= 1. for r in results)
    # an annealed rate stops the rounding variables short of 0 / 1
    assert undecided[False] < undecided[True]


def test_qdrop_input_mixing_fits_on_fp_inputs(monkeypatch):
    from mmddaq.quantization import reconstruction as rec
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(8, 3, 12, 12, generator=gen) for _ in range(2)]
    q = _quantize(copy.deepcopy(fp), 4, batches)
    forward = lambda m, b: m(b)  # noqa: E731
    name = 'block2'  # after quantized units: its two inputs differ
    records = rec._capture(fp, q, fp.get_submodule(name),
                           q.get_submodule(name), forward, batches,
                           fp_inputs=True)
    fp_rows = torch.cat([r[4] for r in records])
    assert not torch.equal(torch.cat([r[0] for r in records]), fp_rows)
    with torch.no_grad():  # the FP input is what the FP model feeds it
        assert torch.equal(fp_rows[:8], fp.block1(fp.stem(batches[0])))
    # without fp_input_prob nothing more is kept
    assert rec._capture(fp, q, fp.get_submodule(name), q.get_submodule(name),
                        forward, batches)[0][4] is None
    seen = []
    real_run = rec._run_unit

    def spy(unit, x, site, multi):
        seen.append(x)
        return real_run(unit, x, site, multi)

    monkeypatch.setattr(rec, '_run_unit', spy)
    BlockReconstruction(iters=3, batch_size=4, fp_input_prob=1.) \
        .reconstruct_unit(fp, q, name, forward, batches)
    steps = seen[len(records):len(records) + 3]  # between the two judgings
    for x in steps:  # every row of every step is an FP input row
        match = (x[:, None] == fp_rows[None]).flatten(2).all(2)
        assert bool(match.any(1).all())
    with pytest.raises(ValueError, match='fp_input_prob'):
        BlockReconstruction(fp_input_prob=1.5)


def _corner_error_by_sensitivity(sensitivity):
    fp, batches, q = _one_conv_w3a8()

    def output_loss(ref, out):  # only the top-left 2x2 corner counts
        return (out - ref)[:, :, :2, :2].pow(2).sum()

    torch.manual_seed(12)
    BlockReconstruction(iters=300, batch_size=8, drop_prob=0.,
                        learn_act_steps=False, sensitivity=sensitivity)(
                            fp, q, lambda m, b: m(b), batches,
                            output_loss=output_loss)
    return _corner_error(fp, q, batches)


def test_sensitivity_maps_follow_the_output_loss():
    from mmddaq.quantization.reconstruction import sensitivity_maps
    fp = _SharedConv().eval()
    gen = torch.Generator().manual_seed(13)
    batches = [torch.randn(4, 8, 6, 6, generator=gen) for _ in range(2)]
    q = _quantize(copy.deepcopy(fp), 4, batches)
    half = 8 * 6 * 6

    def fine_level_only(ref, out):  # the first call's output alone counts
        return (out - ref)[:, :half].pow(2).sum()

    maps = sensitivity_maps(fp, q, lambda m, b: m(b), batches, ['conv'],
                            fine_level_only, floor=0.5)['conv']
    assert sorted(maps) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (b, call), m in maps.items():
        assert m.shape == (4, 1, 6, 6)
        if call == 1:  # the coarse call does not reach the loss: floor only
            assert torch.equal(m, torch.full_like(m, 0.5))
        else:
            assert torch.allclose(m.mean((2, 3)), torch.full((4, 1), 1.5))
    assert all(p.grad is None for p in q.parameters())


def test_sensitivity_favours_the_positions_the_output_loss_reads():
    assert _corner_error_by_sensitivity(0.01) < \
        _corner_error_by_sensitivity(None)
    with pytest.raises(ValueError, match='output_loss'):
        BlockReconstruction(iters=1, sensitivity=0.1)(
            nn.Identity(), nn.Identity(), lambda m, b: m(b),
            [torch.zeros(1, 1)])


class _TowerHead(nn.Module):
    """A conv tower run on two levels, then an output conv, like a
    RetinaNet head's ``cls_convs`` loop."""

    def __init__(self):
        super().__init__()
        from mmcv.cnn import ConvModule
        torch.manual_seed(6)
        self.convs = nn.ModuleList(
            ConvModule(8, 8, 3, padding=1, act_cfg=dict(type='ReLU'))
            for _ in range(3))
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        outs = []
        for level in (x, nn.functional.avg_pool2d(x, 2)):
            for conv in self.convs:
                level = conv(level)
            outs.append(self.out(level).flatten(1))
        return torch.cat(outs, 1)


def test_a_chain_is_one_unit_fitted_on_the_towers_output():
    from mmddaq.quantization.reconstruction import Chain, _capture
    from collections import OrderedDict
    fp = nn.Sequential(OrderedDict(head=_TowerHead())).eval()
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 8, 8, 8, generator=gen) for _ in range(3)]
    q = _quantize(copy.deepcopy(fp), 3, batches, call_sites={'head': 2})
    chains = ['head.convs']
    assert reconstruction_units(q, chains=chains) == ['head.convs',
                                                      'head.out']
    # records: the first conv's input, the last conv's FP output, per level
    records = _capture(fp, q, fp.head.convs, Chain(q.head.convs),
                       lambda m, b: m(b), batches[:1])
    assert [r[2] for r in records] == [0, 1]
    x = batches[0]
    assert torch.equal(records[0][0], x)
    with torch.no_grad():
        assert torch.allclose(records[0][1][0], Chain(fp.head.convs)(x))
    results = BlockReconstruction(iters=100, batch_size=8, chains=chains)(
        fp, q, lambda m, b: m(b), batches)
    assert [r['name'] for r in results] == chains + ['head.out']
    assert results[0]['kept']
    assert results[0]['error_after'] < results[0]['error_before']
    # every conv of the tower got learned rounding, baked onto its grid
    for conv in q.head.convs:
        assert conv.conv.weight_quantizer.fixed_scale.numel()
    with pytest.raises(ValueError, match='bbox_head.cls_convs'):
        reconstruction_units(q, chains=['bbox_head.cls_convs'])
    with pytest.raises(ValueError, match="'head.out'"):
        reconstruction_units(q, chains=['head.out'])
    with pytest.raises(ValueError, match='inside other units'):
        reconstruction_units(q, block_types=('_TowerHead', ),
                             chains=chains)



def test_skipped_modules_keep_their_calibrated_weights():
    """``skip`` leaves the named modules' units out: their weights and
    activation steps stay as calibrated, the other units are fitted."""
    from collections import OrderedDict
    fp = nn.Sequential(OrderedDict(head=_TowerHead())).eval()
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 8, 8, 8, generator=gen) for _ in range(2)]
    q = _quantize(copy.deepcopy(fp), 3, batches, call_sites={'head': 2})
    before = copy.deepcopy(q.state_dict())
    results = BlockReconstruction(iters=20, batch_size=8,
                                  skip=['head.convs'])(
        fp, q, lambda m, b: m(b), batches)
    assert [r['name'] for r in results] == ['head.out']
    after = q.state_dict()
    for key, value in before.items():
        if key.startswith('head.convs.'):
            assert torch.equal(after[key], value), key
    assert any(not torch.equal(after[k], v) for k, v in before.items()
               if k.startswith('head.out.') and k in after)
    with pytest.raises(ValueError, match="'roi_head'"):
        BlockReconstruction(iters=1, skip='roi_head')(
            fp, q, lambda m, b: m(b), batches)

def test_learned_biases_absorb_a_mean_shift():
    """A unit whose quantized copy has shifted biases (as 4-bit activations
    shift a layer's output mean): with ``bias_lr`` reconstruction moves the
    biases and norm shifts back; without it nothing can."""
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(2)]
    errors = {}
    for bias_lr in (None, 5e-2):
        q = _quantize(copy.deepcopy(fp), 8, batches)
        with torch.no_grad():
            q.block1.bn2.bias.add_(0.5)
            q.fc.bias.add_(0.5)
        torch.manual_seed(0)
        results = BlockReconstruction(
            iters=200, batch_size=16, adaround=False, learn_act_steps=False,
            drop_prob=0., bias_lr=bias_lr)(fp, q, lambda m, b: m(b), batches)
        errors[bias_lr] = {r['name']: r['error_after'] for r in results}
        if bias_lr:
            shift = (q.fc.bias - fp.fc.bias).abs().max()
            assert shift < 0.1, shift
            assert q.fc.bias.requires_grad == fp.fc.bias.requires_grad
            assert q.fc.bias.grad is None
    for name in ('block1', 'fc'):
        assert errors[5e-2][name] < 0.1 * errors[None][name], name


def _interrupted_after(monkeypatch, done):
    """Make ``BlockReconstruction`` fail in unit ``done + 1``."""
    real = BlockReconstruction.reconstruct_unit
    calls = []

    def failing(self, *args, **kwargs):
        if len(calls) == done:
            raise RuntimeError('interrupted')
        calls.append(args[2])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BlockReconstruction, 'reconstruct_unit', failing)
    return calls


def test_an_interrupted_reconstruction_resumes_to_the_same_model(
        monkeypatch, tmp_path):
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(2)]
    start = _quantize(copy.deepcopy(fp), 3, batches)
    recon = BlockReconstruction(iters=6, batch_size=8)  # QDrop: random
    run = lambda m, b: m(b)

    torch.manual_seed(5)
    whole = copy.deepcopy(start)
    expected = recon(fp, whole, run, batches)

    state = str(tmp_path / 'state.pth')
    with monkeypatch.context() as patch:
        done = _interrupted_after(patch, 2)
        torch.manual_seed(5)
        with pytest.raises(RuntimeError, match='interrupted'):
            recon(fp, copy.deepcopy(start), run, batches, state_file=state)
    assert done == ['stem.0', 'block1']
    # started again from the same model and pool, the random stream is
    # elsewhere: the finished units are skipped, the rest replayed exactly
    torch.manual_seed(123)
    again = copy.deepcopy(start)
    resumed = recon(fp, again, run, batches, state_file=state)
    assert [r['name'] for r in resumed] == [r['name'] for r in expected]
    for a, b in zip(resumed, expected):
        assert a['error_after'] == pytest.approx(b['error_after'], rel=1e-6)
    for k, v in whole.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    ReconstructionState.remove(state)
    assert not (tmp_path / 'state.pth').exists()


def test_a_state_left_by_another_pool_is_kept_aside_not_used(
        monkeypatch, tmp_path):
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(3)
    pool_a = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(2)]
    pool_b = [x + 0.1 for x in pool_a]
    start = _quantize(copy.deepcopy(fp), 3, pool_a)
    recon = BlockReconstruction(iters=3, batch_size=8)
    run = lambda m, b: m(b)
    state = tmp_path / 'state.pth'
    with monkeypatch.context() as patch:
        _interrupted_after(patch, 1)
        with pytest.raises(RuntimeError):
            recon(fp, copy.deepcopy(start), run, pool_a,
                  state_file=str(state))
    left = state.read_bytes()

    torch.manual_seed(0)
    fresh = copy.deepcopy(start)
    expected = recon(fp, fresh, run, pool_b)
    torch.manual_seed(0)
    other = copy.deepcopy(start)
    results = recon(fp, other, run, pool_b, state_file=str(state))
    assert len(results) == len(expected)
    for k, v in fresh.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    # nothing the earlier run left is lost
    assert (tmp_path / 'state.pth.stale').read_bytes() == left
    # an unreadable file is set aside too
    state.write_bytes(b'not a checkpoint')
    BlockReconstruction(iters=3, batch_size=8)(
        fp, copy.deepcopy(start), run, pool_b, state_file=str(state))
    assert (tmp_path / 'state.pth.stale.1').read_bytes() == \
        b'not a checkpoint'
    # other settings make another reconstruction too; earlier leftovers
    # are not overwritten
    BlockReconstruction(iters=4, batch_size=8)(
        fp, copy.deepcopy(start), run, pool_b, state_file=str(state))
    assert (tmp_path / 'state.pth.stale').read_bytes() == left
    assert (tmp_path / 'state.pth.stale.2').exists()
    # and another FP model (what the blocks are fitted to)
    other_fp = copy.deepcopy(fp)
    with torch.no_grad():
        other_fp.fc.bias.add_(1.)
    BlockReconstruction(iters=4, batch_size=8)(
        other_fp, copy.deepcopy(start), run, pool_b, state_file=str(state))
    assert (tmp_path / 'state.pth.stale.3').exists()


def test_a_run_stopped_in_reconstruction_resumes_it(tiny_fp_checkpoint,
                                                    tmp_path, monkeypatch):
    """``--resume`` after a crash in reconstruction: the finished blocks
    are not redone and the model ends as the uninterrupted run's."""
    from conftest import DDAQ_CONFIG, tiny_ddaq_options
    from mmddaq.apis import build_runner, load_config
    from mmddaq.engine.hooks.utils import algorithm_of

    def config(resume=False):
        cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(
            tiny_fp_checkpoint, max_iters=3, warmup=1, calib=2))
        cfg.custom_hooks = cfg.custom_hooks + [
            dict(type='mmddaq.PostTrainingHook', num_samples=16,
                 batch_size=8,
                 reconstruction=dict(type='mmddaq.BlockReconstruction',
                                     iters=3, batch_size=4))
        ]
        cfg.resume = resume
        return cfg

    whole = build_runner(config(), str(tmp_path / 'whole'), 'whole')
    whole.train()
    units = len(whole.message_hub.get_info('reconstruction'))
    with monkeypatch.context() as patch:
        _interrupted_after(patch, 2)
        with pytest.raises(RuntimeError, match='interrupted'):
            build_runner(config(), str(tmp_path / 'run'), 'run').train()
    assert (tmp_path / 'run' / 'reconstruction_state.pth').exists()
    with monkeypatch.context() as patch:
        redone = _interrupted_after(patch, units)  # counts, never fails
        resumed = build_runner(config(resume=True), str(tmp_path / 'run'),
                               'again')
        resumed.train()
    assert len(redone) == units - 2
    assert not (tmp_path / 'run' / 'reconstruction_state.pth').exists()
    expected = algorithm_of(whole).quantized.state_dict()
    for k, v in algorithm_of(resumed).quantized.state_dict().items():
        assert torch.equal(v, expected[k]), k
