# Copyright (c) mmddaq contributors. All rights reserved.
"""Module-swap quantization of real OpenMMLab models (no fx tracing).

Models are built from the configs shipped inside mmpretrain / mmdet, without
pretrained weights (nothing is downloaded):

* mmpretrain ImageNet classifiers: ResNet-18, ResNet-50, MobileNetV2;
* mmdet RetinaNet R50-FPN and Faster R-CNN R50-FPN.

Structural checks (layer counts, bit-width policy) run on the genuine R50
detectors. Checks that run forwards use the detectors with an R18 backbone to
keep CPU time low; every model-level property is the same.

Weights are random but "trained-like" (see :func:`_trained_like_init`): the
OpenMMLab default init is not usable for numerical checks, because
zero-initialised residual BNs cut the gradient of most convs and MobileNetV2's
activations vanish (~1e-9 at the head, below the float32-eps floor of the
quantization step), while BN statistics re-estimated on noise make the
networks chaotic (0.3 % weight noise changes the logits by 20-30 %).
"""
import copy
import fnmatch
import functools
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, DefaultScope
from mmengine.structures import InstanceData
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import mmddaq  # noqa: F401  (registers the mmddaq components)
from mmddaq.quantization import (ModelQuantizer, QuantConv2d, QuantLinear,
                                 activation_quantizers, freeze_activations,
                                 observation_disabled, quantizable_layers,
                                 quantized_layers)

mmdet = pytest.importorskip('mmdet')
mmpretrain = pytest.importorskip('mmpretrain')
from mmdet.structures import DetDataSample  # noqa: E402

R18_NECK = [64, 128, 256, 512]
IMG = 128  # detector input side
META = dict(
    img_shape=(IMG, IMG),
    ori_shape=(IMG, IMG),
    pad_shape=(IMG, IMG),
    batch_input_shape=(IMG, IMG),
    scale_factor=(1., 1.))

# name -> how to build it and which policy patterns apply to it.
# ``n_layers``: nn.Conv2d + nn.Linear layers of the genuine config.
SPECS = {
    'resnet18':
    dict(
        scope='mmpretrain',
        config='resnet/resnet18_8xb32_in1k.py',
        input=(2, 3, 64, 64),
        n_layers=21,
        skip='backbone.layer4.*',
        first_last=None,  # default: first and last layer in module order
        edges=['backbone.conv1', 'head.fc']),
    'resnet50':
    dict(
        scope='mmpretrain',
        config='resnet/resnet50_8xb32_in1k.py',
        input=(2, 3, 64, 64),
        n_layers=54,
        skip='backbone.layer4.*',
        first_last=None,
        edges=['backbone.conv1', 'head.fc']),
    'mobilenet_v2':
    dict(
        scope='mmpretrain',
        config='mobilenet_v2/mobilenet-v2_8xb32_in1k.py',
        input=(2, 3, 64, 64),
        n_layers=53,
        skip='backbone.layer4.*',
        first_last=None,
        edges=['backbone.conv1.conv', 'head.fc']),
    'retinanet':
    dict(
        scope='mmdet',
        config='retinanet/retinanet_r50_fpn_1x_coco.py',
        input=(1, 3, IMG, IMG),
        n_layers=71,
        skip='bbox_head.*',
        first_last=[
            'backbone.conv1', 'bbox_head.retina_cls', 'bbox_head.retina_reg'
        ],
        edges=[
            'backbone.conv1', 'bbox_head.retina_cls', 'bbox_head.retina_reg'
        ]),
    'faster_rcnn':
    dict(
        scope='mmdet',
        config='faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
        input=(1, 3, IMG, IMG),
        n_layers=68,
        skip='roi_head.*',
        first_last=[
            'backbone.conv1', 'rpn_head.rpn_cls', 'rpn_head.rpn_reg',
            'roi_head.*.fc_*'
        ],
        edges=[
            'backbone.conv1', 'rpn_head.rpn_cls', 'rpn_head.rpn_reg',
            'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg'
        ]),
}
MODEL_NAMES = list(SPECS)
DETECTORS = ['retinanet', 'faster_rcnn']


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
@pytest.fixture(scope='module', autouse=True)
def _single_thread():
    """One intra-op thread: the inputs are tiny, and on CPU cores shared
    with other jobs two threads oversubscribe them (~6x slower runs seen).
    The cached models are dropped when the module is done."""
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(num_threads)
    for cache in (_genuine, _fp, _w8a8):
        cache.cache_clear()


def _config_path(scope: str, rel: str) -> str:
    pkg = mmdet if scope == 'mmdet' else mmpretrain
    return osp.join(osp.dirname(pkg.__file__), '.mim', 'configs', rel)


def _randn(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _trained_like_init(model: nn.Module) -> None:
    """Random weights with the statistics of a trained network.

    He-normal (fan-in) conv/linear weights, small biases, and BNs with
    non-trivial affine parameters and running statistics.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.01)
        elif isinstance(m, _BatchNorm):
            m.weight.uniform_(0.5, 1.)
            m.bias.normal_(0., 0.1)
            m.running_mean.normal_(0., 0.1)
            m.running_var.uniform_(0.5, 2.)


def _build(name: str, genuine: bool, seed: int = 0) -> nn.Module:
    """Build ``name`` from its config, without pretrained weights.

    ``genuine=False`` turns the detectors' backbone into a ResNet-18.
    """
    spec = SPECS[name]
    cfg = Config.fromfile(_config_path(spec['scope'], spec['config']))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.pop('pretrained', None)
    cfg.model.pop('pretrained', None)
    if not genuine and spec['scope'] == 'mmdet':
        cfg.model.backbone.depth = 18
        cfg.model.neck.in_channels = R18_NECK
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # scoped, so that no default scope leaks into other test files
        with DefaultScope.overwrite_default_scope(spec['scope']):
            model = MODELS.build(cfg.model)
        if not genuine:
            _trained_like_init(model)
    return model.eval()


@functools.lru_cache(maxsize=None)
def _genuine(name: str) -> nn.Module:
    """The genuine config's model (R50 detectors); structure checks only."""
    return _build(name, genuine=True)


@functools.lru_cache(maxsize=None)
def _fp(name: str) -> nn.Module:
    """Float model for the numerical checks (never modified)."""
    return _build(name, genuine=False)


def _proposals():
    """Fixed RoIs, so that Faster R-CNN's RoI head sees the same boxes in
    the float and the quantized model (its own RPN proposals would differ
    once quantized)."""
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(16, 2, generator=g) * (IMG - 32)
    wh = torch.rand(16, 2, generator=g) * 40 + 8
    return [InstanceData(bboxes=torch.cat([xy, xy + wh], 1))]


def _flatten(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flatten(o)]


def _outputs(name: str, model: nn.Module, x: torch.Tensor):
    """All raw output tensors of the model (no post-processing)."""
    if name == 'faster_rcnn':
        feats = model.extract_feat(x)
        return (list(feats) + _flatten(model.rpn_head(feats)) +
                _flatten(model.roi_head.forward(feats, _proposals())))
    # classifiers: logits; RetinaNet: per-level cls scores and box deltas
    return _flatten(model(x, mode='tensor'))


def _rel_err(out, ref) -> float:
    out = torch.cat([t.flatten() for t in out])
    ref = torch.cat([t.flatten() for t in ref])
    return ((out - ref).norm() / ref.norm()).item()


def _calibrate(name, model, n_batches=2, seed=100):
    """Observe activation ranges on random batches, then freeze them."""
    with torch.no_grad():
        for i in range(n_batches):
            _outputs(name, model, _randn(SPECS[name]['input'], seed + i))
    freeze_activations(model)
    return model


@functools.lru_cache(maxsize=None)
def _w8a8(name: str) -> nn.Module:
    """Calibrated, frozen W8A8 copy of ``_fp(name)`` (never modified)."""
    q = ModelQuantizer(w_bits=8, a_bits=8).quantize(_fp(name))
    return _calibrate(name, q.eval())


def _data_samples(with_gt=False):
    ds = DetDataSample(metainfo=META)
    if with_gt:
        ds.gt_instances = InstanceData(
            bboxes=torch.tensor([[10., 12., 60., 70.],
                                 [50., 40., 120., 110.]]),
            labels=torch.tensor([1, 5]))
    return [ds]


def _count_conv_linear(model):
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


# --------------------------------------------------------------------------
# (a) every conv/linear is wrapped except the skipped ones (genuine configs)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_layer_count_and_skip(name):
    spec = SPECS[name]
    model = _genuine(name)
    n_float = _count_conv_linear(model)
    assert n_float == spec['n_layers']
    assert len(quantizable_layers(model)) == n_float

    q = ModelQuantizer(w_bits=4, a_bits=4, skip=[spec['skip']]).quantize(model)
    skipped = [
        n for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        and fnmatch.fnmatchcase(n, spec['skip'])
    ]
    assert len(skipped) > 1  # the pattern matches several layers
    wrapped = quantized_layers(q)
    assert len(wrapped) == n_float - len(skipped)
    # module swap, not tracing: the same model class, and every module
    # other than the wrapped layers keeps its type (BN, ReLU, RoIAlign, ...)
    assert type(q) is type(model)
    q_modules = dict(q.named_modules())
    wrapped_names = {n for n, _ in wrapped}
    for n, m in model.named_modules():
        if n not in wrapped_names:
            assert type(q_modules[n]) is type(m), n
    assert [n for n, _ in quantizable_layers(q)] == skipped
    for n in skipped:
        assert type(q.get_submodule(n)) in (nn.Conv2d, nn.Linear), n
    first = quantizable_layers(model)[0][0]
    for n, m in wrapped:
        assert isinstance(m, (QuantConv2d, QuantLinear)), n
        assert m.weight is q.get_submodule(n).weight
        # the stem's input is the image: 8 bits (input_bits)
        assert (m.w_bits, m.a_bits) == (4, 8 if n == first else 4), n
        # the wrapper still is what it replaced (init / FLOP code keeps
        # working) and keeps the layer's hyper-parameters
        orig = model.get_submodule(n)
        assert isinstance(m, type(orig))
        if isinstance(m, nn.Conv2d):
            for attr in ('stride', 'padding', 'dilation', 'groups'):
                assert getattr(m, attr) == getattr(orig, attr), (n, attr)
    # the float model is untouched
    assert not quantized_layers(model)


# --------------------------------------------------------------------------
# (f) first/last-layer bit-width (genuine configs)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_first_last_bits(name):
    spec = SPECS[name]
    q = ModelQuantizer(
        w_bits=4,
        a_bits=4,
        first_last_bits=8,
        first_last_layers=spec['first_last']).quantize(_genuine(name))
    bits = {n: (m.w_bits, m.a_bits) for n, m in quantized_layers(q)}
    assert len(bits) == spec['n_layers']
    for n in spec['edges']:
        assert bits[n] == (8, 8), n
    assert all(b == (4, 4) for n, b in bits.items()
               if n not in spec['edges'])
    assert sum(b == (8, 8) for b in bits.values()) == len(spec['edges'])


# --------------------------------------------------------------------------
# (b) 16 bits is bit-exact
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_16_bits_is_exact(name):
    fp = _fp(name)
    q = ModelQuantizer(w_bits=16, a_bits=16).quantize(fp).eval()
    assert len(quantized_layers(q)) == _count_conv_linear(fp)
    x = _randn(SPECS[name]['input'], 1)
    with torch.no_grad():
        ref, out = _outputs(name, fp, x), _outputs(name, q, x)
        assert len(out) == len(ref)
        for a, b in zip(out, ref):
            assert torch.equal(a, b)
        if name == 'faster_rcnn':
            # the genuine tensor mode: RPN proposals (NMS) + RoI head
            ds = _data_samples()
            ref = _flatten(fp(x, ds, mode='tensor'))
            out = _flatten(q(x, ds, mode='tensor'))
            assert len(out) == len(ref) == 2
            for a, b in zip(out, ref):
                assert torch.equal(a, b)


# --------------------------------------------------------------------------
# (c) W8A8 after calibration stays close to float
# --------------------------------------------------------------------------
W8A8_MAX_REL_ERR = 0.1


def _w8a8_params():
    params = []
    for name in MODEL_NAMES:
        params.append(pytest.param(name))
    return params


@pytest.mark.parametrize('name', _w8a8_params())
def test_w8a8_close_to_float(name):
    fp, q = _fp(name), _w8a8(name)
    assert all(bool(a.frozen) and a.calibrated
               for a in activation_quantizers(q))
    x = _randn(SPECS[name]['input'], 1)
    with torch.no_grad():
        err = _rel_err(_outputs(name, q, x), _outputs(name, fp, x))
    print(f'W8A8 relative L2 error of {name}: {err:.4f}')
    assert 0 < err < W8A8_MAX_REL_ERR


def test_w8a8_retinanet_backbone_and_neck_close_to_float():
    """RetinaNet's own (unshared) layers: backbone and FPN features."""
    fp, q = _fp('retinanet'), _w8a8('retinanet')
    x = _randn(SPECS['retinanet']['input'], 1)
    with torch.no_grad():
        err = _rel_err(q.extract_feat(x), fp.extract_feat(x))
    print(f'W8A8 relative L2 error of retinanet FPN features: {err:.4f}')
    assert 0 < err < W8A8_MAX_REL_ERR


def test_shared_head_range_covers_every_level():
    """A layer run once per FPN level must be calibrated on all levels.

    After calibrating on a single batch, the range of each activation
    quantizer must contain every value its layer saw in that batch.
    """
    # one shared range per layer (per-call-site ranges are tested in
    # test_call_sites.py)
    q = ModelQuantizer(w_bits=8, a_bits=8,
                       call_sites=None).quantize(_fp('retinanet'))
    seen = {}

    def record(name):

        def hook(module, args):
            lo, hi = seen.get(name, (float('inf'), -float('inf')))
            seen[name] = (min(lo, args[0].min().item()),
                          max(hi, args[0].max().item()))

        return hook

    handles = [
        m.register_forward_pre_hook(record(n)) for n, m in quantized_layers(q)
    ]
    _calibrate('retinanet', q, n_batches=1)
    for h in handles:
        h.remove()
    too_narrow = {}
    for n, m in quantized_layers(q):
        obs = m.act_quantizer.observer
        lo, hi = seen[n]
        if obs.max_val.item() < hi * (1 - 1e-5) or \
                obs.min_val.item() > lo * (1 - 1e-5):
            too_narrow[n] = (round(obs.max_val.item(), 2), round(hi, 2))
    # e.g. bbox_head.cls_convs.3.conv: range max 38 for a batch max of 65
    assert not too_narrow, too_narrow


# --------------------------------------------------------------------------
# (d) W4A4: straight-through gradients reach every wrapped weight
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_w4a4_gradients_reach_every_layer(name):
    fp = _fp(name)
    q = ModelQuantizer(w_bits=4, a_bits=4).quantize(fp).eval()
    _calibrate(name, q, n_batches=1)
    if name in DETECTORS:
        # frozen_stages=1: the swap keeps the frozen stem frozen
        assert not fp.backbone.conv1.weight.requires_grad
        assert not q.backbone.conv1.weight.requires_grad
        q.requires_grad_(True)
    x = _randn(SPECS[name]['input'], 2).requires_grad_(True)
    loss = sum(o.pow(2).mean() for o in _outputs(name, q, x))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0
    wrapped = quantized_layers(q)
    assert len(wrapped) == _count_conv_linear(fp)
    for n, m in wrapped:
        g = m.weight.grad
        assert g is not None, n
        assert torch.isfinite(g).all() and g.abs().sum() > 0, n
    # the float model's parameters were shared with nothing
    assert all(p.grad is None for p in fp.parameters())


# --------------------------------------------------------------------------
# (e) state_dict round trip through torch.save / torch.load(weights_only)
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_state_dict_roundtrip(name, tmp_path):
    q = _w8a8(name)
    path = tmp_path / f'{name}_w8a8.pth'
    torch.save(q.state_dict(), path)
    # a fresh copy with other weights and uncalibrated quantizers
    fresh = ModelQuantizer(w_bits=8, a_bits=8).quantize(
        _build(name, genuine=False, seed=1)).eval()
    assert not any(a.calibrated for a in activation_quantizers(fresh))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert all(
        bool(a.frozen) and a.calibrated
        for a in activation_quantizers(fresh))
    x = _randn(SPECS[name]['input'], 3)
    with torch.no_grad():
        out, ref = _outputs(name, fresh, x), _outputs(name, q, x)
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    # frozen: running the model did not move the loaded ranges
    saved, loaded = q.state_dict(), fresh.state_dict()
    assert loaded.keys() == saved.keys()
    for k, v in loaded.items():
        assert torch.equal(v, saved[k]), k


# --------------------------------------------------------------------------
# detectors end to end: NMS / RoIAlign / losses stay in float and run
# --------------------------------------------------------------------------
@pytest.mark.parametrize('name', DETECTORS)
def test_quantized_detector_predict(name):
    """Predict with ranges still calibrating, under observation_disabled."""
    q = ModelQuantizer(w_bits=8, a_bits=8).quantize(_fp(name)).eval()
    with torch.no_grad():
        _outputs(name, q, _randn(SPECS[name]['input'], 100))
    before = copy.deepcopy(q.state_dict())
    assert not any(bool(a.frozen) for a in activation_quantizers(q))
    x = _randn(SPECS[name]['input'], 4)
    with torch.no_grad(), observation_disabled(q):
        results = q(x, _data_samples(), mode='predict')
    assert all(a.observing for a in activation_quantizers(q))  # restored
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k  # no range moved
    assert len(results) == 1
    pred = results[0].pred_instances
    n = len(pred)
    assert 0 < n <= 100
    assert pred.bboxes.shape == (n, 4) and torch.isfinite(pred.bboxes).all()
    assert (pred.bboxes >= 0).all() and (pred.bboxes <= IMG).all()
    assert (pred.scores >= 0.05).all()  # test_cfg.score_thr
    assert pred.labels.min() >= 0 and pred.labels.max() < 80


@pytest.mark.parametrize('name', DETECTORS)
def test_quantized_detector_loss_backward(name):
    q = ModelQuantizer(w_bits=8, a_bits=8).quantize(_fp(name))
    _calibrate(name, q.eval())
    q.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # RoI sampling
        losses = q(_randn(SPECS[name]['input'], 5), _data_samples(True),
                   mode='loss')
    loss, log_vars = q.parse_losses(losses)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    trainable = [(n, m) for n, m in quantized_layers(q)
                 if m.weight.requires_grad]
    assert len(trainable) > 0.8 * len(quantized_layers(q))
    for n, m in trainable:
        g = m.weight.grad
        assert g is not None and torch.isfinite(g).all(), n
        assert g.abs().sum() > 0, n


def test_calibration_survives_an_image_without_rois():
    fp = _fp('faster_rcnn')
    x = _randn(SPECS['faster_rcnn']['input'], 6)
    empty = [InstanceData(bboxes=torch.zeros(0, 4))]
    with torch.no_grad():
        ref = fp.roi_head.forward(fp.extract_feat(x), empty)
    assert [t.shape[0] for t in ref] == [0, 0]
    q = ModelQuantizer(w_bits=8, a_bits=8).quantize(fp).eval()
    with torch.no_grad():
        _outputs('faster_rcnn', q, x)  # calibrating, ranges observed
        out = q.roi_head.forward(q.extract_feat(x), empty)
    assert [t.shape for t in out] == [t.shape for t in ref]
