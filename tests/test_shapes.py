"""The offline shapes detection set: determinism, boxes, mmdet loading."""
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from mmddaq.datasets.shapes import (SHAPES_CLASSES, drop_occluded,
                                    generate_shapes, is_generated,
                                    shapes_ann_file, shapes_metainfo)

BASE_CONFIG = osp.join(ROOT, 'configs', '_base_', 'datasets',
                       'shapes_detection.py')
SPLITS = dict(train=6, val=4)


def load_tool(name):
    """Import ``tools/{name}.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_set(root):
    for split, num in SPLITS.items():
        generate_shapes(str(root), split, num)
    return root


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp('shapes'))


def load_coco(root, split):
    with open(shapes_ann_file(str(root), split), encoding='utf-8') as f:
        return json.load(f)


def load_image(root, split, file_name):
    return np.asarray(Image.open(osp.join(str(root), split, file_name)))


def test_deterministic(shapes_root, tmp_path):
    other = make_set(tmp_path / 'again')
    for split in SPLITS:
        with open(shapes_ann_file(str(shapes_root), split), 'rb') as f:
            first = f.read()
        with open(shapes_ann_file(str(other), split), 'rb') as f:
            assert f.read() == first
        for img in load_coco(shapes_root, split)['images']:
            name = img['file_name']
            a = load_image(shapes_root, split, name)
            assert np.array_equal(a, load_image(other, split, name))
            with open(osp.join(str(shapes_root), split, name), 'rb') as f:
                a_bytes = f.read()
            with open(osp.join(str(other), split, name), 'rb') as f:
                assert f.read() == a_bytes


def test_splits_differ_and_prefix_stable(shapes_root, tmp_path):
    train = load_image(shapes_root, 'train', '000001.png')
    val = load_image(shapes_root, 'val', '000001.png')
    assert not np.array_equal(train, val)
    # image i depends only on (seed, i): a shorter split is a prefix
    generate_shapes(str(tmp_path), 'train', 2)
    for name in ('000001.png', '000002.png'):
        assert np.array_equal(
            load_image(tmp_path, 'train', name),
            load_image(shapes_root, 'train', name))


def test_drop_occluded():
    def square(y0, x0, side):
        mask = np.zeros((16, 16), dtype=bool)
        mask[y0:y0 + side, x0:x0 + side] = True
        return dict(label=1, mask=mask)

    # the bottom square is 75 % hidden (by the middle L and the top square)
    # and is dropped; the two others stay whole
    objects = [square(0, 0, 4), square(0, 0, 2), square(2, 2, 2)]
    objects[1]['mask'][2:4, 0:2] = True
    kept = drop_occluded(objects, min_visible=0.4)
    assert len(kept) == 2
    assert kept[0]['visible'].sum() == 8 and kept[1]['visible'].sum() == 4
    # the top object always survives
    assert len(drop_occluded([square(0, 0, 4) for _ in range(3)], 1.)) == 1
    with pytest.raises(ValueError):
        generate_shapes('unused', 'train', 1, min_objects=3, max_objects=2)


@pytest.mark.parametrize('split', list(SPLITS))
def test_annotations_valid(shapes_root, split):
    coco = load_coco(shapes_root, split)
    assert [c['name'] for c in coco['categories']] == list(SHAPES_CLASSES)
    cat_ids = {c['id'] for c in coco['categories']}
    assert len(coco['images']) == SPLITS[split]
    assert len({a['id'] for a in coco['annotations']}) == len(
        coco['annotations'])
    assert min(a['id'] for a in coco['annotations']) >= 1
    per_image = {img['id']: 0 for img in coco['images']}
    images = {img['id']: img for img in coco['images']}
    for ann in coco['annotations']:
        img = images[ann['image_id']]
        per_image[img['id']] += 1
        assert ann['category_id'] in cat_ids and ann['iscrowd'] == 0
        x, y, w, h = ann['bbox']
        assert w > 0 and h > 0 and 0 < ann['area'] <= w * h
        assert x >= 0 and y >= 0
        assert x + w <= img['width'] and y + h <= img['height']
        pixels = load_image(shapes_root, split, img['file_name'])
        assert pixels.shape == (img['height'], img['width'], 3)
        # the object's colour fills its visible area and touches all four
        # sides of its (tight) box
        is_obj = np.all(pixels[y:y + h, x:x + w] == ann['color'], axis=-1)
        assert is_obj.sum() >= ann['area']
        assert is_obj[0].any() and is_obj[-1].any()
        assert is_obj[:, 0].any() and is_obj[:, -1].any()
    assert min(per_image.values()) >= 1


def test_coco_dataset_loads(shapes_root):
    from mmdet.datasets import CocoDataset
    from mmengine import Config
    from mmengine.registry import init_default_scope

    init_default_scope('mmdet')
    cfg = Config.fromfile(BASE_CONFIG)
    meta = shapes_metainfo()
    assert tuple(cfg.metainfo['classes']) == meta['classes']
    assert [tuple(c) for c in cfg.metainfo['palette']] == [
        tuple(c) for c in meta['palette']
    ]
    dataset = CocoDataset(
        data_root=str(shapes_root),
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=meta,
        pipeline=cfg.train_pipeline)
    assert len(dataset) == SPLITS['train']
    item = dataset[0]
    assert item['inputs'].shape == (3, 128, 128)
    bboxes = item['data_samples'].gt_instances.bboxes
    assert len(bboxes) > 0
    labels = item['data_samples'].gt_instances.labels
    assert int(labels.min()) >= 0 and int(labels.max()) < len(SHAPES_CLASSES)


def test_coco_metric_perfect_predictions(shapes_root):
    from mmdet.evaluation import CocoMetric

    coco = load_coco(shapes_root, 'val')
    metric = CocoMetric(
        ann_file=shapes_ann_file(str(shapes_root), 'val'), metric='bbox')
    metric.dataset_meta = shapes_metainfo()
    for img in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == img['id']]
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox']
                                                        for a in anns)]
        pred = dict(
            bboxes=torch.tensor(xyxy, dtype=torch.float32),
            scores=torch.ones(len(anns)),
            labels=torch.tensor([a['category_id'] - 1 for a in anns]))
        metric.process(
            data_batch={},
            data_samples=[
                dict(
                    img_id=img['id'],
                    ori_shape=(img['height'], img['width']),
                    pred_instances=pred)
            ])
    results = metric.evaluate(size=len(coco['images']))
    assert results['coco/bbox_mAP'] == pytest.approx(1.0)


def test_make_shapes_idempotent(tmp_path, capsys):
    out = tmp_path / 'shapes'
    cmd = [
        sys.executable,
        osp.join(ROOT, 'tools', 'make_shapes.py'), '--out',
        str(out), '--num-train', '3', '--num-val', '2'
    ]
    env = dict(os.environ, PYTHONWARNINGS='ignore')

    def run(*extra):
        proc = subprocess.run(
            cmd + list(extra),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    def mtimes():
        return {
            p: os.stat(osp.join(str(out), p)).st_mtime_ns
            for p in ('annotations/instances_train.json',
                      'annotations/instances_val.json', 'train/000001.png',
                      'val/000002.png')
        }

    assert 'train: wrote 3 images' in run()
    assert is_generated(str(out), 'train', 3)
    before = mtimes()
    assert 'skipped' in run()
    assert mtimes() == before
    # a different request or --force regenerates (in-process: faster)
    assert not is_generated(str(out), 'train', 4)
    make_shapes = load_tool('make_shapes')
    make_shapes.main(['--out', str(out), '--num-train', '3', '--num-val',
                      '2', '--force'])
    assert 'val: wrote 2 images' in capsys.readouterr().out
    after = mtimes()
    assert all(after[p] >= before[p] for p in before)
    assert after['annotations/instances_val.json'] != before[
        'annotations/instances_val.json']
