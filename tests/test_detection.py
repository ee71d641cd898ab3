"""DDAQ on small mmdet detectors: one-stage and two-stage adapters."""
import pytest
import torch
from mmengine.hub import get_config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

from mmddaq.importance import HessianImportance, OutputSensitivityImportance
from mmddaq.models import DDAQ

SIZE = 64
TINY_BACKBONE = dict(
    depth=18, base_channels=16, stem_channels=16, init_cfg=None,
    frozen_stages=-1)
TINY_NECK = dict(in_channels=[16, 32, 64, 128], out_channels=32)


def tiny_detector(kind):
    init_default_scope('mmdet')
    if kind == 'retinanet':
        cfg = get_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py')
        cfg.model.bbox_head.update(
            num_classes=5, in_channels=32, feat_channels=32, stacked_convs=1)
    else:
        cfg = get_config(
            'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py')
        cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
        cfg.model.roi_head.bbox_roi_extractor.out_channels = 32
        cfg.model.roi_head.bbox_head.update(
            num_classes=5, in_channels=32, fc_out_channels=64)
    cfg.model.backbone.update(TINY_BACKBONE)
    cfg.model.neck.update(TINY_NECK)
    return cfg.model


def tiny_fp_weights(arch, tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(arch)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(2):
            model.extract_feat(torch.randn(4, 3, SIZE, SIZE))
    path = tmp_path / 'fp.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def build(kind, tmp_path, **overrides):
    arch = tiny_detector(kind)
    adapter = 'mmddaq.OneStageDetectorAdapter' if kind == 'retinanet' \
        else 'mmddaq.TwoStageDetectorAdapter'
    cfg = dict(
        type='mmddaq.DDAQ',
        architecture=arch,
        fp_checkpoint=tiny_fp_weights(arch, tmp_path),
        input_shape=(3, SIZE, SIZE),
        quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=4, a_bits=4),
        generator=dict(type='mmddaq.Generator', img_size=SIZE,
                       latent_dim=16, base_channels=16, num_upsamples=3),
        adapter=dict(type=adapter))
    cfg.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.train()
    optim = build_optim_wrapper(
        model,
        dict(constructor='mmddaq.SubmoduleOptimWrapperConstructor',
             generator=dict(optimizer=dict(type='Adam', lr=1e-3)),
             quantized=dict(optimizer=dict(type='Adam', lr=1e-3))))
    return model, optim


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_detector_train_step(kind, tmp_path):
    model, optim = build(kind, tmp_path)
    assert isinstance(model, DDAQ)
    # D1 uses the backbone's BN layers (FPN and heads have none)
    assert model.bns_loss.layer_names
    assert all(n.startswith('backbone.') for n in model.bns_loss.layer_names)
    assert 'neck' in model.taps
    fp0, q0, g0 = (snapshot(model.fp_model), snapshot(model.quantized),
                   snapshot(model.generator))
    from mmddaq.quantization import freeze_activations
    for i in range(2):
        log = model.train_step(dict(batch_size=2), optim)
        if i == 0:  # calibration batch; D2 reaches the generator after it
            assert 'loss_dis' not in log
            freeze_activations(model.quantized)
    for key in ('loss_g', 'loss_bns', 'loss_dis', 'loss_kd', 'loss_q_dis'):
        assert torch.isfinite(log[key]), key
    assert 'loss_ce' not in log  # unconditional generator
    assert log['loss_kd'] > 0
    fp1, q1, g1 = (snapshot(model.fp_model), snapshot(model.quantized),
                   snapshot(model.generator))
    assert all(torch.equal(fp0[k], fp1[k]) for k in fp0)
    assert any(not torch.equal(q0[k], q1[k]) for k in q0
               if k.endswith('.weight'))
    assert any(not torch.equal(g0[k], g1[k]) for k in g0)


def test_two_stage_roi_head_runs_on_fp_proposals(tmp_path):
    model, _ = build('faster_rcnn', tmp_path)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        fp_out = model.adapter.forward(model.fp_model, x)
        q_out = model.adapter.forward(model.quantized, x, reference=fp_out)
    assert q_out['proposals'] is fp_out['proposals']
    assert q_out['cls_score'].shape == fp_out['cls_score'].shape
    assert q_out['cls_score'].shape[1] == 6  # 5 classes + background
    # identical models give zero distillation loss, quantized ones not
    same = model.adapter.distill_loss(fp_out, fp_out)
    assert float(same) == pytest.approx(0., abs=1e-6)
    assert float(model.adapter.distill_loss(fp_out, q_out)) > 0


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_detector_importance_covers_every_layer(kind, tmp_path):
    model, _ = build(kind, tmp_path)

    def sample(n):
        return torch.randn(n, 3, SIZE, SIZE)

    for method in (HessianImportance(batch_size=2, num_batches=1,
                                     num_probes=1),
                   OutputSensitivityImportance(batch_size=2)):
        torch.manual_seed(0)
        imp = method(model.fp_model, model.quantized, sample, model.adapter)
        assert any(k.startswith('neck.') for k in imp)
        head = 'bbox_head.' if kind == 'retinanet' else 'roi_head.'
        assert any(k.startswith(head) for k in imp)
        assert sum(imp.values()) / len(imp) == pytest.approx(1.0)
    model.set_layer_importance(imp)
    assert set(model.dis_loss.tap_weights) == set(model.taps)


def test_quantized_detector_predicts(tmp_path):
    from mmdet.structures import DetDataSample
    model, optim = build('retinanet', tmp_path)
    model.train_step(dict(batch_size=2), optim)
    model.eval()
    sample = DetDataSample(metainfo=dict(
        img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), scale_factor=(1., 1.),
        pad_shape=(SIZE, SIZE), batch_input_shape=(SIZE, SIZE)))
    with torch.no_grad():
        out = model(torch.randn(1, 3, SIZE, SIZE), [sample], mode='predict')
    assert hasattr(out[0], 'pred_instances')


def test_frozen_stages_of_the_fp_backbone_still_fine_tune(tmp_path):
    """mmdet's ResNet re-freezes frozen_stages on every train(); the
    quantized copy must keep training its stem and first stage."""
    arch = tiny_detector('retinanet')
    arch.backbone.frozen_stages = 1
    model, optim = build('retinanet', tmp_path, architecture=arch)
    model.train()
    q = model.quantized.backbone
    for name in ('conv1', 'layer1.0.conv1'):
        assert q.get_submodule(name).weight.requires_grad, name
    assert not model.fp_model.backbone.conv1.weight.requires_grad
    from mmddaq.quantization import freeze_activations
    model.train_step(dict(batch_size=2, update_quantized=False), optim)
    freeze_activations(model.quantized)
    before = q.layer1[0].conv1.weight.detach().clone()
    model.train_step(dict(batch_size=2, update_generator=False), optim)
    assert not torch.equal(before, q.layer1[0].conv1.weight)


def _level(size, classes=3, anchors=2, confident=True):
    """Teacher/student outputs: background everywhere, one confident anchor
    (top-left) where the student disagrees."""
    fp_s = torch.full((1, anchors * classes, size, size), -10.)
    fp_b = torch.zeros(1, anchors * 4, size, size)
    q_s, q_b = fp_s.clone(), fp_b.clone()
    if confident:
        fp_s[0, 0, 0, 0] = 4.
        q_s[0, 0, 0, 0] = -1.
        q_b[0, :4, 0, 0] = 0.5
    return fp_s, q_s, fp_b, q_b


def test_confidence_weighted_kd_is_not_diluted_by_background():
    from mmddaq.models.adapters.detector_base import (confident_roi_kd,
                                                      dense_kd)
    losses = {}
    for weighting in ('confidence', 'uniform'):
        small, large = (dense_kd(*[[t] for t in _level(s)], box_weight=1.,
                                 weighting=weighting) for s in (2, 8))
        losses[weighting] = float(small / large)
        same = _level(4)
        zero = dense_kd([same[0]], [same[0]], [same[2]], [same[2]], 1.,
                        weighting)
        assert abs(float(zero)) < 1e-6
    # 16x more background anchors: the confident loss barely moves, the
    # plain mean shrinks with the anchor count
    assert losses['confidence'] < 1.5
    assert losses['uniform'] > 8
    with pytest.raises(ValueError, match='kd_weighting'):
        dense_kd([], [], [], [], 1., weighting='mean')
    # RoI head: a background RoI (teacher sure of background) hardly counts
    fp_cls = torch.tensor([[5., -5., -5.], [-5., -5., 8.]])  # fg, bg RoI
    fp_box = torch.zeros(2, 4)
    q_cls = fp_cls.clone()
    q_cls[1] = torch.tensor([8., -5., -5.])  # wrong only on the bg RoI
    assert float(confident_roi_kd(fp_cls, q_cls, fp_box, fp_box, 1.)) < 0.01
    q_cls = fp_cls.clone()
    q_cls[0] = torch.tensor([-5., 5., -5.])  # wrong on the fg RoI
    assert float(confident_roi_kd(fp_cls, q_cls, fp_box, fp_box, 1.)) > 1.


def test_confident_anchor_share():
    from mmddaq.models.adapters.detector_base import confident_anchor_share
    level = torch.full((2, 6, 4, 4), -10.)  # 2 anchors x 3 classes
    assert confident_anchor_share([level]) == 0.
    level[0, 4, 1, 1] = 3.  # one position of one image: an object
    assert confident_anchor_share([level, torch.full((2, 6, 2, 2), -10.)]) \
        == pytest.approx(1 / (2 * 16 + 2 * 4))


def test_score_map_and_per_level_score_error(tmp_path):
    import copy
    import importlib.util
    import os.path as osp
    spec = importlib.util.spec_from_file_location(
        'score_error', osp.join(osp.dirname(__file__), '..', 'tools',
                                'score_error.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    model, optim = build('retinanet', tmp_path)
    model.train_step(dict(batch_size=2), optim)  # calibrates the ranges
    model.eval()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, SIZE, SIZE, generator=gen)]
    out = model.adapter.forward(model.fp_model, batches[0])
    m = model.adapter.score_map(out, batches[0])
    assert m.shape == (2, 1, SIZE, SIZE)
    best = max(float(s.sigmoid().max()) for s in out['cls_scores'])
    assert float(m.max()) == pytest.approx(best, rel=1e-5)
    # a score threshold of 0 makes every anchor "confident"
    levels = tool.level_errors(model, batches, 0.)
    assert len(levels) == len(out['cls_scores'])
    assert sum(r['logit_mse'] for r in levels) > 0
    assert all(r['confident_anchors'] > 0 for r in levels)
    model.quantized = copy.deepcopy(model.fp_model)  # no quantization
    assert all(r['logit_mse'] == 0 and r['confident_score_mse'] == 0
               for r in tool.level_errors(model, batches, 0.))


def test_feature_kd_counts_every_level_alike():
    from mmddaq.models.adapters.detector_base import feature_kd
    gen = torch.Generator().manual_seed(0)
    fine = torch.randn(2, 8, 16, 16, generator=gen)
    coarse = 50 * torch.randn(2, 8, 4, 4, generator=gen)
    assert float(feature_kd([fine, coarse], [fine, coarse])) == 0.
    # the same 10 % relative error costs the same on either level
    err_fine = feature_kd([fine, coarse], [1.1 * fine, coarse])
    err_coarse = feature_kd([fine, coarse], [fine, 1.1 * coarse])
    assert float(err_fine) == pytest.approx(float(err_coarse), rel=1e-5)
    assert float(err_fine) == pytest.approx(0.01 / 2, rel=1e-5)
    with pytest.raises(ValueError, match='same levels'):
        feature_kd([fine], [fine, coarse])


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_feature_kd_reaches_the_quantized_neck(kind, tmp_path):
    model, _ = build(kind, tmp_path)
    outputs_only = model.adapter
    with_feats = type(outputs_only)(feature_weight=2.)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        fp_out = with_feats.forward(model.fp_model, x)
    q_out = with_feats.forward(model.quantized, x, reference=fp_out)
    assert len(q_out['feats']) == model.quantized.neck.num_outs
    from mmddaq.models.adapters.detector_base import feature_kd
    loss = with_feats.distill_loss(fp_out, q_out)
    expected = outputs_only.distill_loss(fp_out, q_out) + \
        2. * feature_kd(fp_out['feats'], q_out['feats'])
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    features_only = feature_kd(fp_out['feats'], q_out['feats'])
    assert float(features_only) > 0
    features_only.backward()  # the feature term alone trains the neck
    neck = model.quantized.neck.fpn_convs[0].conv.weight
    assert neck.grad is not None and neck.grad.abs().sum() > 0
    head = dict(model.quantized.named_parameters())[
        'bbox_head.retina_cls.weight' if kind == 'retinanet'
        else 'rpn_head.rpn_cls.weight']
    assert head.grad is None  # and nothing after it
    # off by default: the outputs carry no features
    assert 'feats' not in outputs_only.forward(model.fp_model, x)
    with pytest.raises(ValueError, match='feature_weight'):
        type(outputs_only)(feature_weight=-1.)
