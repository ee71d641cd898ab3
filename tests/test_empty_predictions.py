"""A detector that predicts no box scores 0 (with a warning), not a crash."""
import json

import torch
from mmengine.registry import MODELS, init_default_scope

from mmddaq.apis import build_runner, complete_metrics, load_config, run_test
from mmddaq.apis.metrics import expected_metric_keys
from mmddaq.datasets.shapes import generate_shapes, shapes_ann_file
from test_benchmark import _benchmark_module

CONFIG = 'configs/ddaq_retinanet_r18-w16_shapes_w4a4.py'


def silent_detector_checkpoint(path):
    """A RetinaNet whose class scores are all far below score_thr."""
    init_default_scope('mmdet')
    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model.architecture)
    with torch.no_grad():
        model.bbox_head.retina_cls.bias.fill_(-50.)
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def options(root, ckpt):
    return {
        'model.fp_checkpoint': ckpt,
        'model.eval_model': 'fp',
        'test_dataloader.dataset.data_root': str(root) + '/',
        'test_dataloader.batch_size': 2,
        'test_evaluator.ann_file': shapes_ann_file(str(root), 'val'),
    }


def test_expected_keys_and_completion():
    evaluator = dict(type='CocoMetric', metric=['bbox'], ann_file='x.json')
    keys = expected_metric_keys(evaluator)
    assert 'coco/bbox_mAP' in keys and 'coco/bbox_mAP_50' in keys
    assert expected_metric_keys([dict(type='Accuracy')]) == []
    done = complete_metrics({}, evaluator)
    assert done['coco/bbox_mAP'] == 0.
    # reported metrics are left alone
    assert complete_metrics({'coco/bbox_mAP': 0.3},
                            evaluator)['coco/bbox_mAP'] == 0.3


def test_detector_without_boxes_scores_zero(tmp_path, capsys):
    root = tmp_path / 'shapes'
    generate_shapes(str(root), 'val', 4)
    ckpt = silent_detector_checkpoint(tmp_path / 'silent.pth')
    cfg = load_config(CONFIG, options(root, ckpt))
    runner = build_runner(cfg, str(tmp_path / 'run'), 'silent')
    assert runner.test() == {}  # what CocoMetric gives: nothing
    capsys.readouterr()
    metrics = run_test(runner)
    assert metrics['coco/bbox_mAP'] == 0. and \
        metrics['coco/bbox_mAP_50'] == 0.
    assert 'WARNING - The model predicted no box' in capsys.readouterr().out

    # the benchmark records the zero instead of failing
    config = str(tmp_path / 'silent_ddaq.py')
    load_config(CONFIG, options(root, ckpt)).dump(config)
    out = str(tmp_path / 'rows.json')
    _benchmark_module().main([
        '--config', config, '--checkpoint', ckpt, '--out', out,
        '--methods', 'fp', '--work-root', str(tmp_path / 'runs')])
    with open(out) as f:
        rows = json.load(f)
    assert {r['metric']: r['value'] for r in rows} == \
        {'bbox_mAP': 0., 'bbox_mAP_50': 0.}
