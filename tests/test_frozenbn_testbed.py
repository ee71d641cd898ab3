"""The frozen-BN detection testbeds: their data, pretraining and configs."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from conftest import ROOT
from mmddaq.apis import load_config
from mmddaq.datasets.patches import (generate_patches, patch_params,
                                     patches_generated)
from mmddaq.datasets.shapes import (ALL_SHAPES_CLASSES, BACKGROUND_PHOTOS,
                                    SHAPES_CLASSES, SMALL_SHAPES,
                                    generate_shapes, generation_params,
                                    is_generated, object_mask,
                                    shapes_ann_file, shapes_metainfo)

CONFIGS = osp.join(ROOT, 'configs')


def test_new_classes_are_what_they_say():
    size = 64
    ring = object_mask(ALL_SHAPES_CLASSES.index('ring'), (32., 32.), 20., 0.,
                       size)
    disc = object_mask(0, (32., 32.), 20., 0., size)
    assert not ring[32, 32] and ring[32, 32 + 16] and ring.sum() < disc.sum()
    half = object_mask(ALL_SHAPES_CLASSES.index('half_disc'), (32., 32.),
                       20., 0., size)
    assert 0.4 < half.sum() / disc.sum() < 0.6
    for name in ('hexagon', 'arrow', 'ell'):
        mask = object_mask(ALL_SHAPES_CLASSES.index(name), (32., 32.), 20.,
                           0.3, size)
        assert 0 < mask.sum() < disc.sum(), name


def test_five_class_set_is_unchanged():
    # the default set records no num_classes, so its files stay valid
    assert 'num_classes' not in generation_params('train', 3)
    assert shapes_metainfo()['classes'] == SHAPES_CLASSES
    with pytest.raises(ValueError, match='num_classes'):
        generation_params('train', 3, num_classes=11)


def test_small_shapes_set(tmp_path):
    coco = generate_shapes(str(tmp_path), 'train', 12, **SMALL_SHAPES)
    names = [c['name'] for c in coco['categories']]
    assert names == list(ALL_SHAPES_CLASSES)
    labels = {a['category_id'] for a in coco['annotations']}
    assert max(labels) > len(SHAPES_CLASSES)  # the new classes appear
    sides = [max(a['bbox'][2:]) for a in coco['annotations']]
    assert max(sides) <= SMALL_SHAPES['max_size'] + 1
    assert len(coco['annotations']) >= 2 * len(coco['images'])
    assert is_generated(str(tmp_path), 'train', 12, **SMALL_SHAPES)
    assert not is_generated(str(tmp_path), 'train', 12)  # other settings
    cfg = Config.fromfile(
        osp.join(CONFIGS, '_base_', 'datasets', 'shapes_small_detection.py'))
    assert list(cfg.metainfo['classes']) == names


def test_patches_deterministic_and_checked(tmp_path):
    generate_patches(str(tmp_path / 'a'), 'train', 2, img_size=16)
    generate_patches(str(tmp_path / 'b'), 'train', 2, img_size=16)
    for name in BACKGROUND_PHOTOS:
        for i in range(2):
            rel = osp.join('train', name, f'{i:05d}.png')
            with open(tmp_path / 'a' / rel, 'rb') as f, \
                    open(tmp_path / 'b' / rel, 'rb') as g:
                assert f.read() == g.read()
    assert patches_generated(str(tmp_path / 'a'), 'train', 2, img_size=16)
    assert not patches_generated(str(tmp_path / 'a'), 'train', 3,
                                 img_size=16)
    assert not patches_generated(str(tmp_path / 'a'), 'train', 2)
    with open(tmp_path / 'a' / 'train.json') as f:
        assert json.load(f)['params'] == patch_params('train', 2, 16)


DETECTORS = ('retinanet', 'faster-rcnn', 'retinanet-p3')


def _heads(detector):
    """The modules after the neck: a dense head, or RPN and RoI head."""
    if hasattr(detector, 'bbox_head'):
        return [detector.bbox_head]
    return [detector.rpn_head, detector.roi_head]


@pytest.mark.parametrize('detector_name', DETECTORS)
def test_pretrained_classifier_loads_into_frozen_bn_detector(
        tmp_path, detector_name):
    """The patch classifier's backbone is the detector's, BN frozen."""
    import mmpretrain  # noqa: F401
    from mmengine.registry import MODELS
    init_default_scope('mmpretrain')
    cls_cfg = Config.fromfile(osp.join(CONFIGS, 'fp_resnet18-w16_patches.py'))
    classifier = MODELS.build(cls_cfg.model)
    with torch.no_grad():
        for p in classifier.parameters():
            p.uniform_(-1, 1)
    ckpt = str(tmp_path / 'cls.pth')
    torch.save(dict(state_dict=classifier.state_dict()), ckpt)

    init_default_scope('mmdet')
    det_cfg = Config.fromfile(
        osp.join(CONFIGS, f'fp_{detector_name}_r18-w16_frozenbn.py'))
    det_cfg.model.backbone.init_cfg.checkpoint = ckpt
    detector = MODELS.build(det_cfg.model)
    detector.init_weights()
    source = {k[len('backbone.'):]: v
              for k, v in classifier.state_dict().items()
              if k.startswith('backbone.')}
    target = detector.backbone.state_dict()
    assert set(source) == set(target)
    for key, value in source.items():
        assert torch.equal(target[key], value), key

    detector.train()
    bns = [m for m in detector.backbone.modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # norm_eval
    assert not detector.backbone.conv1.weight.requires_grad  # frozen stem
    assert not any(p.requires_grad
                   for p in detector.backbone.layer1.parameters())
    assert all(p.requires_grad for p in detector.backbone.layer2.parameters()
               if p.dim() > 1)
    # FPN and head carry no BN: nothing there describes the test images
    after_backbone = [detector.neck] + _heads(detector)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for head in after_backbone for m in head.modules())


@pytest.mark.parametrize('detector_name', DETECTORS)
def test_ddaq_config_quantizes_the_frozen_bn_detector(detector_name):
    cfg = Config.fromfile(
        osp.join(CONFIGS, f'ddaq_{detector_name}_r18-w16_frozenbn_w4a4.py'))
    assert cfg.train_dataloader is None
    arch = cfg.model.architecture
    assert arch.backbone.norm_eval and arch.backbone.frozen_stages == 1
    head = arch.get('bbox_head') or arch.roi_head.bbox_head
    assert head.num_classes == len(ALL_SHAPES_CLASSES)
    # the detection prior: one of the detector's classes per generated image
    assert cfg.model.generator.num_classes == len(ALL_SHAPES_CLASSES)
    assert cfg.model.loss_weights.ce > 0
    assert cfg.test_dataloader.dataset.data_root == 'data/shapes_small/'
    assert 'shapes_small' in cfg.test_evaluator.ann_file
    assert cfg.model.fp_checkpoint.startswith(
        f'work_dirs/fp_{detector_name}_r18-w16_frozenbn/')
    assert np.isfinite(cfg.input_shape[-1])
    # the tune-chosen post-training recipe travels with both detectors
    post = [h for h in cfg.custom_hooks
            if h.type == 'mmddaq.PostTrainingHook']
    assert len(post) == 1 and post[0].reconstruction.focus > 0
    assert post[0].calibration_samples.type == 'mmddaq.GaussianSamples'


@pytest.mark.parametrize('detector_name', DETECTORS)
def test_benchmark_suite_prepares_pretraining_first(detector_name):
    from test_benchmark import _benchmark_module
    bench = _benchmark_module()
    suite = bench.SUITES[f'frozenbn-{detector_name}']
    assert suite['fp_config'].endswith(
        f'fp_{detector_name}_r18-w16_frozenbn.py')
    assert suite['ddaq_config'].endswith(
        f'ddaq_{detector_name}_r18-w16_frozenbn_w4a4.py')
    assert suite['pretrain'][0].endswith('fp_resnet18-w16_patches.py')
    assert 'shapes_small' in suite['tune_options']['test_evaluator.ann_file']
    assert suite['data'] in bench.DATA


@pytest.mark.parametrize('detector_name', DETECTORS)
def test_tune_split_replaces_the_reported_one_everywhere(detector_name):
    """A tune run validates during training and tests on ``tune`` only."""
    from test_benchmark import _benchmark_module
    bench = _benchmark_module()
    suite = bench.SUITES[f'frozenbn-{detector_name}']
    cfg = load_config(suite['ddaq_config'], suite['tune_options'])
    for stage in ('val', 'test'):
        loader = cfg[f'{stage}_dataloader']
        assert loader.dataset.ann_file == 'annotations/instances_tune.json'
        assert loader.dataset.data_prefix.img == 'tune/'
        assert cfg[f'{stage}_evaluator'].ann_file.endswith(
            'shapes_small/annotations/instances_tune.json')
    digits = load_config(bench.SUITES['digits']['ddaq_config'],
                         bench.SUITES['digits']['tune_options'])
    assert digits.val_dataloader.dataset.split == 'tune'
    assert digits.test_dataloader.dataset.split == 'tune'


@pytest.mark.parametrize('detector', ['retinanet', 'faster-rcnn'])
def test_p2a8_config_keeps_only_the_p2_lateral_input_at_8_bits(detector):
    from mmengine.registry import MODELS as MMENGINE_MODELS

    from mmddaq.registry import MODELS
    cfg = Config.fromfile(
        osp.join(CONFIGS,
                 f'ddaq_{detector}_r18-w16_frozenbn_w4a4-p2a8.py'))
    init_default_scope('mmdet')
    arch = dict(cfg.model.architecture)
    arch['backbone'] = dict(arch['backbone'], init_cfg=None)
    plan = MODELS.build(cfg.model.quantizer).plan(
        MMENGINE_MODELS.build(arch))
    assert plan['neck.lateral_convs.0.conv'] == (4, 8)
    assert plan['neck.lateral_convs.1.conv'] == (4, 4)
    assert plan['neck.fpn_convs.0.conv'] == (4, 4)
    assert plan['backbone.conv1'] == (8, 8)  # the first/last rule stays
    # the first/last rule: the stem and the output layers
    first_last = len(cfg.model.quantizer.first_last_layers)
    assert sum(b == (4, 4) for b in plan.values()) == \
        len(plan) - first_last - 1


def _build_detector(config):
    from mmengine.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(CONFIGS, config))
    model = dict(cfg.model)
    model['backbone'] = dict(model['backbone'], init_cfg=None)
    return MODELS.build(model).eval()


def test_p3_retinanet_has_mmdet_levels_and_the_p2_testbeds_anchors():
    """The P3 testbed's FPN starts at C3 (stride 8) as mmdet's RetinaNet;
    its anchors keep the P2 testbed's sizes, on levels whose strides match
    the feature maps."""
    p3 = _build_detector('fp_retinanet-p3_r18-w16_frozenbn.py')
    p2 = _build_detector('fp_retinanet_r18-w16_frozenbn.py')
    assert p3.neck.lateral_convs[0].conv.in_channels == 32  # C3, not C2
    assert p2.neck.lateral_convs[0].conv.in_channels == 16
    with torch.no_grad():
        feats = p3.extract_feat(torch.zeros(1, 3, 128, 128))
    strides = [128 // f.shape[-1] for f in feats]
    assert strides == [8, 16, 32, 64, 128]
    assert p3.bbox_head.prior_generator.strides == [(s, s) for s in strides]
    sizes3 = p3.bbox_head.prior_generator.base_anchors[0]
    sizes2 = p2.bbox_head.prior_generator.base_anchors[0]
    area = (lambda a: (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))
    assert torch.allclose(area(sizes3), area(sizes2))
