"""The COCO detection configs run end to end on a tiny synthetic COCO set.

Full-size R50 detectors, a local random-weight FP checkpoint, two DDAQ
iterations and COCO-metric evaluation on two synthetic images: proves the
configs a user with COCO and a GPU will run, without any download.
"""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope
from PIL import Image

from conftest import ROOT
from mmddaq.apis import load_config, train_and_test


def make_tiny_coco(root):
    (root / 'annotations').mkdir(parents=True)
    (root / 'val2017').mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(2):
        img = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        img[20:60, 30:90] = (255, 0, 0)
        Image.fromarray(img).save(root / 'val2017' / f'{i}.jpg')
        images.append(dict(id=i, file_name=f'{i}.jpg', width=128, height=96))
        anns.append(dict(id=i, image_id=i, category_id=1,
                         bbox=[30, 20, 60, 40], area=2400, iscrowd=0))
    from mmdet.datasets import CocoDataset
    cats = [dict(id=i + 1, name=name)
            for i, name in enumerate(CocoDataset.METAINFO['classes'])]
    with open(root / 'annotations' / 'instances_val2017.json', 'w') as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)


def small_local_model(cfg, tmp_path, size):
    """``cfg`` with a local FP checkpoint (random weights) in place of the
    model-zoo URL and a small generator making ``size`` px images."""
    init_default_scope('mmdet')
    torch.manual_seed(0)
    fp = MODELS.build(cfg.model.architecture)
    ckpt = tmp_path / 'fp.pth'
    torch.save({'state_dict': fp.state_dict(), 'meta': {}}, ckpt)
    cfg.merge_from_dict({
        'model.fp_checkpoint': str(ckpt),
        'model.input_shape': (3, size, size),
        'model.generator.img_size': size,
        'model.generator.num_upsamples': 3,
        'model.generator.base_channels': 16,
    })


@pytest.mark.parametrize('config', [
    'configs/ddaq_retinanet_w4a4.py', 'configs/ddaq_faster-rcnn_w4a4.py'
])
def test_coco_config_runs_with_local_checkpoint(config, tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / 'coco'
    make_tiny_coco(data)
    cfg = load_config(osp.join(ROOT, config))
    size = 128
    small_local_model(cfg, tmp_path, size)
    cfg.merge_from_dict({
        'train_cfg.max_iters': 2,
        'train_cfg.batch_size': 1,
        'train_cfg.warmup_iters': 1,
        'train_cfg.val_interval': 2,
        'val_dataloader.batch_size': 1,
        'val_dataloader.dataset.data_root': str(data) + '/',
        'val_dataloader.dataset.pipeline.1.scale': (size, size),
        'val_evaluator.ann_file': str(
            data / 'annotations' / 'instances_val2017.json'),
        'custom_hooks': [
            dict(type='mmddaq.LayerImportanceHook',
                 method=dict(type='HessianImportance', batch_size=1,
                             num_batches=1, num_probes=1)),
            dict(type='mmddaq.ActivationCalibrationHook', calib_iters=1),
        ],
    })
    if 'rcnn' in cfg.model.architecture.test_cfg:
        # random weights score ~1/81 per class: keep them so COCO has boxes
        cfg.model.architecture.test_cfg.rcnn.score_thr = 0.
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    metrics = train_and_test(cfg, str(tmp_path / 'work'), 'coco')
    assert 'coco/bbox_mAP' in metrics
    assert 0. <= metrics['coco/bbox_mAP'] <= 1.
    assert (tmp_path / 'work' / 'iter_2.pth').is_file()
    imp = json.loads((tmp_path / 'work' / 'layer_importance.json').read_text())
    assert any(k.startswith('neck.') for k in imp)


@pytest.mark.parametrize('config', [
    'configs/ddaq_retinanet_w4a4.py', 'configs/ddaq_faster-rcnn_w4a4.py'
])
def test_coco_recipe_reconstructs_the_frozen_stem_and_layer1(
        config, tmp_path, monkeypatch):
    """The COCO configs carry the recipe chosen on the frozen-BN testbed
    (generator pool, Gaussian ranges, focused reconstruction); mmdet's
    ``frozen_stages=1`` must not keep the quantized stem and layer1 out of
    it: their rounding receives gradients."""
    from mmddaq.engine.hooks.post_training_hook import recalibrate
    from mmddaq.quantization.reconstruction import (BlockReconstruction,
                                                    reconstruction_units)
    from mmddaq.registry import HOOKS
    torch.set_num_threads(1)
    cfg = load_config(osp.join(ROOT, config))
    assert cfg.model.architecture.backbone.frozen_stages == 1
    assert cfg.model.generator.num_classes == 80
    assert cfg.model.loss_weights.ce > 0  # the detection prior
    # the generator alone trains; refinement is the post-training hook's
    assert cfg.train_cfg.warmup_iters >= cfg.train_cfg.max_iters
    posts = [h for h in cfg.custom_hooks
             if h['type'].endswith('PostTrainingHook')]
    assert len(posts) == 1
    post = posts[0]
    assert post['samples']['type'] == 'mmddaq.AlgorithmSamples'
    assert post['calibration_samples']['type'] == 'mmddaq.GaussianSamples'
    assert post['reconstruction']['focus'] > 0
    hook = HOOKS.build(post)
    rec = hook.reconstruction
    rec.iters, rec.batch_size = 2, 1

    size = 64
    small_local_model(cfg, tmp_path, size)
    init_default_scope('mmddaq')
    model = MODELS.build(cfg.model)
    model.train()  # mmdet's ResNet re-freezes frozen_stages here
    q = model.quantized

    units = reconstruction_units(q, rec.block_types)
    assert 'backbone.conv1' in units and 'backbone.layer1.0' in units
    grads = {}
    original = BlockReconstruction._optimise

    def spy(self, unit, fit, groups, rounders, weights):
        original(self, unit, fit, groups, rounders, weights)
        grads[unit] = [p.grad is not None and bool(p.grad.abs().sum() > 0)
                       for g in groups for p in g['params']]

    monkeypatch.setattr(BlockReconstruction, '_optimise', spy)
    batches = [torch.randn(1, 3, size, size)]
    forward = model.adapter.forward
    with torch.no_grad():
        recalibrate(q, forward, batches)
    maps = rec._focus_maps(model.fp_model, forward, batches,
                           model.adapter.score_map)
    assert maps is not None and maps[0].shape[-2:] == (size, size)
    for name in ('backbone.conv1', 'backbone.layer1.0'):
        result = rec.reconstruct_unit(model.fp_model, q, name, forward,
                                      batches, maps)
        assert np.isfinite(result['error_after'])
        unit = q.get_submodule(name)
        assert grads[unit] and all(grads[unit]), name
    # the last unit runs on the head's rows (a RoI head: one per RoI, not
    # one per image): the image-sized focus map must not be applied there
    last = units[-1]
    result = rec.reconstruct_unit(model.fp_model, q, last, forward, batches,
                                  maps)
    assert np.isfinite(result['error_after']), last
