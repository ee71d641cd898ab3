"""tools/quantize.py end to end on tiny configs that live only here."""
import importlib.util
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from conftest import ROOT
from mmddaq.datasets.shapes import generate_shapes, shapes_ann_file

FAST = ['--iters', '4', '--batch-size', '2', '--num-samples', '4',
        '--reconstruction-iters', '2']

CLASSIFIER = '''
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
default_scope = 'mmpretrain'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNet_CIFAR', depth=18, stem_channels=8,
                  base_channels=8, out_indices=(3, )),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=64,
              loss=dict(type='CrossEntropyLoss')))
data_preprocessor = dict(type='ClsDataPreprocessor', num_classes=10,
                         mean=[78.0] * 3, std=[83.0] * 3, to_rgb=False)
test_dataloader = dict(
    batch_size=64, num_workers=0,
    dataset=dict(type='mmddaq.DigitsDataset', split='tune',
                 pipeline=[dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_evaluator = dict(type='Accuracy', topk=(1, ))
test_cfg = dict(type='TestLoop')
train_cfg = dict(by_epoch=True, max_epochs=100)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1))
param_scheduler = dict(type='MultiStepLR', milestones=[30, 60])
default_hooks = dict(logger=dict(type='LoggerHook', interval=10))
'''

DETECTOR = '''
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
_base_ = ['mmdet::{base}']
model = dict(
    backbone=dict(depth=18, base_channels=16, stem_channels=16,
                  init_cfg=None, frozen_stages=1, norm_eval=True),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32))
{head}
classes = ('circle', 'square', 'triangle', 'star', 'cross')
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))]
test_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(type='CocoDataset', data_root='{root}/',
                 ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), metainfo=dict(classes=classes),
                 pipeline=test_pipeline, test_mode=True))
test_evaluator = dict(type='CocoMetric', metric='bbox',
                      ann_file='{ann}')
'''

NOT_A_TASK_MODEL = CLASSIFIER[:CLASSIFIER.index('model = dict(')] + \
    CLASSIFIER[CLASSIFIER.index('test_dataloader'):] + \
    """model = dict(type='mmddaq.Generator', img_size=32, latent_dim=8,
             base_channels=8)
"""

RETINA_HEAD = ("model.update(bbox_head=dict(num_classes=5, in_channels=32, "
               "feat_channels=32, stacked_convs=1))")
FASTER_HEAD = (
    "model.update(rpn_head=dict(in_channels=32, feat_channels=32), "
    "roi_head=dict(bbox_roi_extractor=dict(out_channels=32), "
    "bbox_head=dict(num_classes=5, in_channels=32, fc_out_channels=32)))")


def tool(name):
    spec = importlib.util.spec_from_file_location(
        f'mmddaq_{name}_tool', osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def random_checkpoint(config, path, scope):
    init_default_scope(scope)
    cfg = Config.fromfile(config)
    arch = cfg.model.copy()
    if cfg.get('data_preprocessor'):
        arch['data_preprocessor'] = cfg.data_preprocessor
    torch.manual_seed(0)
    model = MODELS.build(arch)
    model.train()
    with torch.no_grad():  # non-trivial BN statistics
        for _ in range(2):
            model.extract_feat(torch.randn(4, 3, 64, 64) if scope == 'mmdet'
                               else torch.randn(8, 3, 32, 32))
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cls')
    config = write(tmp, 'my_classifier.py', CLASSIFIER)
    return config, random_checkpoint(config, tmp / 'fp.pth', 'mmpretrain')


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    generate_shapes(str(root), 'val', 4)
    return root


def detector(tmp_path, shapes_root, kind):
    base, head = (('retinanet/retinanet_r50_fpn_1x_coco.py', RETINA_HEAD)
                  if kind == 'retinanet' else
                  ('faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', FASTER_HEAD))
    config = write(tmp_path, f'my_{kind}.py', DETECTOR.format(
        base=base, head=head, root=shapes_root,
        ann=shapes_ann_file(str(shapes_root), 'val')))
    return config, random_checkpoint(config, tmp_path / 'fp.pth', 'mmdet')


def check_report(work_dir, metric):
    with open(osp.join(work_dir, 'report.json')) as f:
        report = json.load(f)
    assert metric in report['fp_metrics']
    assert metric in report['quantized_metrics']
    assert osp.isfile(report['checkpoint'])
    assert osp.isfile(osp.join(work_dir, 'report.md'))
    assert osp.isfile(osp.join(work_dir, 'layer_bits.png'))
    # the run's own peak (mmddaq.apis.cost.PeakMemory), not a guess
    assert report['peak_memory_mb'] > 0
    return report


def test_classifier_end_to_end_and_rerun_with_train(classifier, tmp_path):
    config, ckpt = classifier
    work = str(tmp_path / 'q')
    report = tool('quantize').main([config, ckpt, '--work-dir', work,
                                    *FAST])
    saved = check_report(work, 'accuracy/top1')
    assert saved['quantized_metrics'] == report['quantized_metrics']
    assert saved['task'] == 'classifier'
    assert saved['input_shape'] == [3, 32, 32]
    bits = saved['layer_bits']
    assert bits['backbone.conv1'] == [8, 8] and bits['head.fc'] == [8, 8]
    assert bits['backbone.layer1.0.conv1'] == [4, 4]
    generated = osp.join(work, 'generated', 'quantize_config.py')
    text = open(generated).read()
    assert f"_base_ = [{osp.abspath(config)!r}]" in text
    cfg = Config.fromfile(generated)
    assert cfg.param_scheduler is None  # the FP schedule is gone
    assert cfg.model.architecture.backbone.type == 'ResNet_CIFAR'
    # the generated config reproduces the run through tools/train.py
    work2 = str(tmp_path / 'again')
    tool('train').main([generated, '--work-dir', work2])
    from mmddaq.apis import load_config, test_checkpoint
    last = open(osp.join(work2, 'last_checkpoint')).read().strip()
    again = test_checkpoint(load_config(generated), last, work2, 'again')
    assert again['accuracy/top1'] == \
        saved['quantized_metrics']['accuracy/top1']
    # a finished run is never overwritten
    with pytest.raises(SystemExit, match='already holds a finished'):
        tool('quantize').main([config, ckpt, '--work-dir', work, *FAST])


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_detectors_end_to_end(kind, shapes_root, tmp_path):
    config, ckpt = detector(tmp_path, shapes_root, kind)
    work = str(tmp_path / 'q')
    tool('quantize').main([config, ckpt, '--work-dir', work, '--export',
                           '--show-data', *FAST])
    report = check_report(work, 'coco/bbox_mAP')
    export = report['export']
    # the graph's outputs through mmdet's own decoding, NMS and metric (a
    # two-stage detector: both graphs, RoIAlign between them)
    for options in ('default_metrics', 'recommended_metrics'):
        assert 0. <= export[options]['coco/bbox_mAP'] <= 1.
    assert abs(export['recommended_metrics']['coco/bbox_mAP'] -
               report['quantized_metrics']['coco/bbox_mAP']) < 0.05
    if kind == 'faster_rcnn':
        assert osp.isfile(osp.join(work, 'model.roi_head.onnx'))
    # real test images are shown only because --show-data asked for them
    from PIL import Image
    # two panels (synthetic, real) instead of one
    assert Image.open(osp.join(work, 'samples.png')).size[1] > 400
    assert report['task'] == ('one_stage' if kind == 'retinanet'
                              else 'two_stage')
    assert report['input_shape'] == [3, 64, 64]
    bits = report['layer_bits']
    outputs = (['bbox_head.retina_cls', 'bbox_head.retina_reg']
               if kind == 'retinanet' else
               ['rpn_head.rpn_cls', 'rpn_head.rpn_reg',
                'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg'])
    for name in ['backbone.conv1'] + outputs:
        assert bits[name] == [8, 8], name
    assert bits['neck.fpn_convs.0.conv'] == [4, 4]


def test_ptq_method(classifier, tmp_path):
    config, ckpt = classifier
    work = str(tmp_path / 'ptq')
    tool('quantize').main([config, ckpt, '--work-dir', work, '--method',
                           'ptq', '--export', *FAST])
    report = check_report(work, 'accuracy/top1')
    assert report['method'] == 'ptq'
    export = report['export']
    assert osp.isfile(export['onnx'])
    # onnxruntime with the recommended options reproduces the fake-quant
    # model; its default bias rounding may move the outputs a little
    assert export['recommended_max_over_range'] < 0.02
    assert export['default_max_over_range'] < 0.15
    # the test metric through onnxruntime: the recommended session agrees
    # with the PyTorch fake-quant model up to a few ties
    top1 = report['quantized_metrics']['accuracy/top1']
    assert abs(export['recommended_metrics']['accuracy/top1'] - top1) <= 1.
    assert abs(export['default_metrics']['accuracy/top1'] - top1) <= 10.
    assert 'onnxruntime' in open(osp.join(work, 'report.md')).read()
    # synthetic samples only (no --show-data): one panel
    from PIL import Image
    assert Image.open(osp.join(work, 'samples.png')).size[1] < 400
    cfg = Config.fromfile(osp.join(work, 'generated', 'quantize_config.py'))
    assert cfg.model.generator is None


def test_bad_inputs_fail_before_any_work(classifier, shapes_root, tmp_path):
    config, ckpt = classifier
    main = tool('quantize').main
    work = str(tmp_path / 'never')

    def fails(args, match):
        with pytest.raises(SystemExit, match=match):
            main(args + ['--work-dir', work])
        assert not osp.exists(work)  # nothing was written

    fails([str(tmp_path / 'nope.py'), ckpt], 'does not exist')
    broken = write(tmp_path, 'broken.py', CLASSIFIER.replace(
        "type='ImageClassifier'", "type='NoSuchClassifier'"))
    fails([broken, ckpt], 'does not build')
    fails([config, str(tmp_path / 'missing.pth')], 'does not exist')
    fails([config, 'https://example.com/model_20200101.pth'],
          'is a URL')
    other = write(tmp_path, 'wider.py', CLASSIFIER.replace(
        'base_channels=8', 'base_channels=16').replace(
            'in_channels=64', 'in_channels=128'))
    fails([other, ckpt], 'does not match')
    fails([config, ckpt, '--w-bits', '1'], 'bit-width')
    fails([config, ckpt, '--a-bits', '12'], 'bit-width')
    fails([config, ckpt, '--first-last-bits', '9'], 'first/last')
    no_data = write(tmp_path, 'no_data.py', DETECTOR.format(
        base='retinanet/retinanet_r50_fpn_1x_coco.py', head=RETINA_HEAD,
        root=shapes_root, ann=str(tmp_path / 'gone' / 'val.json')))
    det_ckpt = random_checkpoint(no_data, tmp_path / 'det.pth', 'mmdet')
    fails([no_data, det_ckpt], 'gone/val.json')
    not_task = write(tmp_path, 'generator.py', NOT_A_TASK_MODEL)
    fails([not_task, ckpt], 'no mmddaq adapter handles Generator')


def test_methods_that_read_real_images_are_refused(tmp_path, capsys):
    # qdrop-real needs a real_calib_dataloader the one-command tool never
    # has: refused by the argument parser, before anything is built
    with pytest.raises(SystemExit):
        tool('quantize').parse_args(['cfg.py', 'ckpt.pth', '--method',
                                     'qdrop-real'])
    assert "invalid choice: 'qdrop-real'" in capsys.readouterr().err
    assert tool('quantize').parse_args(
        ['cfg.py', 'ckpt.pth', '--method', 'genie']).method == 'genie'
