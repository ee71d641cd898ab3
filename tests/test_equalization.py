"""Channel-range equalisation of ResNet residual streams."""
import copy

import pytest
import torch
from test_detection import SIZE, build, tiny_detector, tiny_fp_weights

from mmddaq.engine.hooks.post_training_hook import PostTrainingHook, \
    recalibrate
from mmddaq.quantization import StreamEqualization, stream_writers


def _uneven_stream(model):
    """Give stage 0's stream channels ranges 1x to 16x apart (FP and
    quantized alike, so both stay the same function)."""
    for net in (model.fp_model, model.quantized):
        writers = stream_writers(net.backbone, 0)
        factor = torch.logspace(0, 4, writers[0].num_features, base=2.)
        with torch.no_grad():
            for norm in writers:
                norm.weight.mul_(factor)
                norm.bias.mul_(factor)
            # the readers undo it: still the function it was
            for conv in (net.backbone.layer1[0].conv1,
                         net.backbone.layer1[1].conv1,
                         net.backbone.layer2[0].conv1,
                         net.backbone.layer2[0].downsample[0],
                         net.neck.lateral_convs[0].conv):
                conv.weight.div_(factor.view(1, -1, 1, 1))
    for layer in model.quantized.modules():
        if hasattr(layer, 'weight_quantizer'):
            layer.weight_quantizer.init_from(layer.weight)


def _outputs(model, net, x):
    out = model.adapter.forward(net, x)
    return torch.cat([t.flatten() for t in out['cls_scores']] +
                     [t.flatten() for t in out['bbox_preds']])


def _stream_spread(net, x, model):
    """Largest over smallest per-channel peak of the stage-0 stream."""
    peaks = []
    hook = net.backbone.layer1.register_forward_hook(
        lambda m, a, o: peaks.append(o.abs().transpose(0, 1).flatten(1)
                                     .amax(1)))
    with torch.no_grad():
        model.adapter.forward(net, x)
    hook.remove()
    return (peaks[0].max() / peaks[0].min().clamp(min=1e-6)).item()


@pytest.fixture(scope='module')
def uneven_retinanet(tmp_path_factory):
    # P2 from C2, as the frozen-BN testbeds: the stage-0 stream feeds the
    # neck too
    arch = tiny_detector('retinanet')
    arch.neck.start_level = 0
    arch.bbox_head.anchor_generator.strides = [4, 8, 16, 32, 64]
    weights = tiny_fp_weights(arch, tmp_path_factory.mktemp('p2'))
    model, _ = build('retinanet', tmp_path_factory.mktemp('eq'),
                     architecture=arch, fp_checkpoint=weights)
    model.eval()
    _uneven_stream(model)
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(4, 3, SIZE, SIZE, generator=gen) for _ in range(3)]
    return model, pool


def _w4a4_error(model, pool, equalise):
    model = copy.deepcopy(model)
    fp, q, forward = model.fp_model, model.quantized, model.adapter.forward
    if equalise:
        StreamEqualization(alpha=1.)(fp, q, forward, pool)
    recalibrate(q, forward, pool)
    with torch.no_grad():
        return sum(((_outputs(model, q, x) - _outputs(model, fp, x))**2)
                   .mean().item() for x in pool), model


def test_equalisation_keeps_the_function_and_evens_the_stream(
        uneven_retinanet):
    model, pool = uneven_retinanet
    model = copy.deepcopy(model)
    x = pool[0]
    with torch.no_grad():
        before = _outputs(model, model.fp_model, x)
    spread = _stream_spread(model.fp_model, x, model)
    eq = StreamEqualization(alpha=1.)
    readers = eq._measure(model.fp_model, model.adapter.forward, pool, 0)[1]
    assert {'backbone.layer1.0.conv1', 'backbone.layer1.1.conv1',
            'backbone.layer2.0.conv1', 'backbone.layer2.0.downsample.0',
            'neck.lateral_convs.0.conv'} == set(readers)
    scales = eq(model.fp_model, model.quantized, model.adapter.forward,
                pool)[0]
    assert scales.shape == (16, ) and (scales > 0).all()
    with torch.no_grad():
        after = _outputs(model, model.fp_model, x)
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-4)
    assert _stream_spread(model.fp_model, x, model) < spread / 4
    # the quantized copy got the same scales
    for fp_norm, q_norm in zip(stream_writers(model.fp_model.backbone, 0),
                               stream_writers(model.quantized.backbone, 0)):
        assert torch.equal(fp_norm.weight, q_norm.weight)
    for name in readers:
        assert torch.equal(model.fp_model.get_submodule(name).weight,
                           model.quantized.get_submodule(name).weight)


def test_equalisation_lowers_the_w4a4_output_error(uneven_retinanet):
    model, pool = uneven_retinanet
    plain, _ = _w4a4_error(model, pool, equalise=False)
    equalised, _ = _w4a4_error(model, pool, equalise=True)
    assert equalised < 0.8 * plain


def test_equalisation_refuses_what_it_cannot_scale(uneven_retinanet):
    model, pool = uneven_retinanet
    model = copy.deepcopy(model)
    args = (model.fp_model, model.quantized, model.adapter.forward, pool)
    with pytest.raises(ValueError, match='stage 7'):
        StreamEqualization(stages=[7])(*args)
    with pytest.raises(ValueError, match='no downsample'):
        # ResNet-18's layer1 continues the stem's stream; layer2 starts
        # with a downsample, so only stage 0 lacks one and is allowed
        stream_writers(_NoDownsample(), 1)
    with pytest.raises(ValueError, match="'encoder'"):
        StreamEqualization(backbone='encoder')(*args)
    with pytest.raises(ValueError, match='alpha'):
        StreamEqualization(alpha=2.)
    from mmpretrain.models.backbones import SEResNet
    with pytest.raises(ValueError, match='SE / plugin'):
        stream_writers(SEResNet(depth=50, base_channels=8, stem_channels=8),
                       1)
    with pytest.raises(ValueError, match='calibrate=True'):
        PostTrainingHook(calibrate=False,
                         equalization=dict(type='mmddaq.StreamEqualization'))


def _resnet(**kwargs):
    from mmdet.models.backbones import ResNet
    torch.manual_seed(0)
    net = ResNet(base_channels=8, stem_channels=8, init_cfg=None,
                 **kwargs)
    net.eval()  # mmdet's train() returns nothing
    with torch.no_grad():  # uneven channels, non-trivial statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.2, 3.)
                m.bias.uniform_(-1., 1.)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.)
    return net


def _run(model, x):
    return model(x)


class _WithNeck(torch.nn.Module):
    """A ResNet whose every stage output is read by a 1x1 conv, as an
    FPN's laterals do (the streams are inside the model)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.backbone = _resnet(**kwargs)
        with torch.no_grad():
            outs = self.backbone(torch.zeros(1, 3, 32, 32))
        self.laterals = torch.nn.ModuleList(
            torch.nn.Conv2d(o.shape[1], 4, 1) for o in outs)

    def forward(self, x):
        return [c(o) for c, o in zip(self.laterals, self.backbone(x))]


@pytest.mark.parametrize('kwargs', [
    dict(depth=50),  # Bottleneck: stem and downsample start the streams
    dict(depth=18, deep_stem=True, avg_down=True),  # ResNetV1d
])
def test_every_stream_of_other_resnets_keeps_the_function(kwargs):
    fp = _WithNeck(**kwargs)
    q = copy.deepcopy(fp)
    pool = [torch.randn(2, 3, 64, 64, generator=torch.Generator()
                        .manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        before = fp(pool[0])
    scales = StreamEqualization(stages=[0, 1, 2, 3], alpha=1.)(
        fp, q, _run, pool)
    assert sorted(scales) == [0, 1, 2, 3]
    assert all((s - 1).abs().max() > 0.05 for s in scales.values())
    with torch.no_grad():
        for a, b, c in zip(before, fp(pool[0]), q(pool[0])):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)
            assert torch.allclose(a, c, rtol=1e-3, atol=1e-4)


class _CopiedRead(torch.nn.Module):
    """A neck that reads C2 through a copy: invisible to the identity
    check, so the scaling would change its output."""

    def __init__(self):
        super().__init__()
        self.backbone = _resnet(depth=18)
        self.neck = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.neck(self.backbone(x)[0] * 1.)


def test_a_read_it_cannot_follow_puts_everything_back():
    fp = _CopiedRead()
    q = copy.deepcopy(fp)
    pool = [torch.randn(2, 3, 32, 32)]
    states = [copy.deepcopy(m.state_dict()) for m in (fp, q)]
    with pytest.raises(ValueError, match='as they were'):
        StreamEqualization(alpha=1.)(fp, q, _run, pool)
    for model, state in zip((fp, q), states):
        for k, v in model.state_dict().items():
            assert torch.equal(v, state[k]), k


def test_dead_channels_keep_scale_one_and_spare_the_others():
    fp = _WithNeck(depth=18)
    with torch.no_grad():  # 4 of the 8 stream channels never fire
        for norm in stream_writers(fp.backbone, 0):
            norm.weight[:4] = 0.
            norm.bias[:4] = -1.
    q = copy.deepcopy(fp)
    pool = [torch.randn(2, 3, 32, 32)]
    eq = StreamEqualization(alpha=1.)
    peaks = eq._measure(fp, _run, pool, 0)[0]
    s = eq(fp, q, _run, pool)[0]
    assert torch.equal(s[:4], torch.ones(4))
    # the live channels are scaled by their own peaks (alpha 1), not all
    # pushed to one bound by the dead ones
    assert torch.allclose(s[4:] / s[4:].max(), peaks[4:] / peaks[4:].max(),
                          rtol=1e-4)


class _NoDownsample(torch.nn.Module):
    res_layers = ['layer1', 'layer2']

    def __init__(self):
        super().__init__()
        self.layer1 = torch.nn.Sequential(torch.nn.Identity())
        self.layer2 = torch.nn.Sequential(torch.nn.Identity())
