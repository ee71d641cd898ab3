"""The quantized detector's mAP against the FP detector's own boxes."""
import pytest
import torch

from mmddaq.apis.agreement import agreement_map, detect


def _dets(boxes, scores, labels):
    return dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                scores=torch.tensor(scores, dtype=torch.float32),
                labels=torch.tensor(labels, dtype=torch.long))


REFERENCE = [
    _dets([[10, 10, 40, 40], [50, 50, 90, 80], [0, 0, 5, 5]],
          [0.9, 0.6, 0.1], [0, 1, 2]),
    _dets([[20, 30, 60, 70]], [0.8], [1]),
]


def test_the_reference_itself_scores_one_and_nothing_scores_zero():
    assert agreement_map(REFERENCE, REFERENCE) == pytest.approx(1.0)
    empty = [_dets([], [], []) for _ in REFERENCE]
    assert agreement_map(REFERENCE, empty) == 0.


def test_worse_boxes_score_lower():
    def moved(shift):
        return [dict(d, bboxes=d['bboxes'] + shift) for d in REFERENCE]

    near, far = agreement_map(REFERENCE, moved(1.)), \
        agreement_map(REFERENCE, moved(4.))
    assert 0 < far < near < 1
    wrong_class = [dict(d, labels=(d['labels'] + 1) % 3) for d in REFERENCE]
    assert agreement_map(REFERENCE, wrong_class) == 0.
    # the reference's low-scoring box is not an object: missing it is free
    dropped = [_dets(REFERENCE[0]['bboxes'][:2].tolist(), [0.9, 0.6],
                     [0, 1]), REFERENCE[1]]
    assert agreement_map(REFERENCE, dropped) == pytest.approx(1.0)
    # ... but it is one from a lower threshold
    assert agreement_map(REFERENCE, dropped, score_thr=0.05) < 0.99


def test_bad_input_is_named():
    with pytest.raises(ValueError, match='2 reference images but 1'):
        agreement_map(REFERENCE, REFERENCE[:1])
    with pytest.raises(ValueError, match='no reference box scores 0.95'):
        agreement_map(REFERENCE, REFERENCE, score_thr=0.95)


@pytest.mark.parametrize("kind", ["retinanet", "faster_rcnn"])
def test_detect_runs_an_mmdet_detector_on_a_batch(kind, tmp_path):
    from test_detection import build
    model, optim = build(kind, tmp_path)
    model.train_step(dict(batch_size=2), optim)
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    for net in (model.fp_model, model.quantized):
        out = detect(net, x)
        assert len(out) == 3
        for d in out:
            assert d['bboxes'].shape == (len(d['scores']), 4)
            assert len(d['labels']) == len(d['scores'])
    fp = detect(model.fp_model, x)
    assert agreement_map(fp, fp, score_thr=0.) == pytest.approx(1.0)


def test_coco_rules_that_hold_here():
    # a class the reference never has costs nothing (COCO scores only
    # classes with ground truth); every detection of an image counts
    extra = [dict(d) for d in REFERENCE]
    extra[0] = _dets(REFERENCE[0]['bboxes'].tolist() + [[60, 0, 70, 9]] * 5,
                     REFERENCE[0]['scores'].tolist() + [0.99] * 5,
                     REFERENCE[0]['labels'].tolist() + [7] * 5)
    assert agreement_map(REFERENCE, extra) == pytest.approx(1.0)
    many = [_dets([[i, i, i + 8, i + 8] for i in range(150)], [0.9] * 150,
                  [0] * 150)]
    assert agreement_map(many, many) == pytest.approx(1.0)
    # a reference box without area is no object
    flat = [_dets([[10, 10, 40, 40], [5, 5, 5, 20]], [0.9, 0.9], [0, 0])]
    assert agreement_map(flat, flat) == pytest.approx(1.0)
