"""How well a quantized detector reproduces the FP detector's boxes, with
no labelled data: COCO bbox mAP of the quantized model's detections
scored against the FP model's own confident detections on the same images
(generated ones, for a data-free measure).

The distillation losses that refinement minimises compare raw head outputs
over every anchor; mAP looks at the few confident, NMS-surviving boxes.
The two can rank layers differently (docs/benchmarks.md, Round 18): this
measure asks the metric's question of the FP model instead of a dataset.
"""
import contextlib
import io
from typing import List, Sequence

import torch
from torch import nn

from mmddaq.models.adapters.detector_base import synthetic_img_metas


@torch.no_grad()
def detect(model: nn.Module, inputs: torch.Tensor) -> List[dict]:
    """Post-processed detections of an mmdet detector on a batch.

    Args:
        model (nn.Module): An mmdet detector (FP or quantized).
        inputs (Tensor): ``(N, 3, H, W)`` normalised images (what the data
            preprocessor or a generator gives).

    Returns:
        list[dict]: Per image, ``bboxes`` ``(k, 4)`` (xyxy, input pixels),
        ``scores`` ``(k, )`` and ``labels`` ``(k, )`` as CPU tensors.
    """
    # mmdet's structures pull in mmcv's compiled ops: imported here
    from mmdet.structures import DetDataSample
    samples = [DetDataSample(metainfo=m) for m in synthetic_img_metas(inputs)]
    out = model.predict(inputs, samples, rescale=False)
    return [
        dict(bboxes=s.pred_instances.bboxes.detach().float().cpu(),
             scores=s.pred_instances.scores.detach().float().cpu(),
             labels=s.pred_instances.labels.detach().cpu()) for s in out
    ]


def _has_area(bboxes: torch.Tensor) -> torch.Tensor:
    return (bboxes[:, 2] > bboxes[:, 0]) & (bboxes[:, 3] > bboxes[:, 1])


def _coco_boxes(bboxes: torch.Tensor) -> List[List[float]]:
    xy = bboxes[:, :2]
    wh = (bboxes[:, 2:] - bboxes[:, :2]).clamp(min=0)
    return torch.cat([xy, wh], 1).tolist()


def agreement_map(reference: Sequence[dict], detections: Sequence[dict],
                  score_thr: float = 0.3) -> float:
    """COCO bbox mAP of ``detections`` against ``reference`` boxes.

    Every reference box scoring at least ``score_thr`` is a ground-truth
    object; lower-scoring ones are left out (they are not what the FP
    detector reports as found), as are boxes without area. Scored by
    pycocotools' ``COCOeval``, the evaluator behind mmdet's
    ``CocoMetric``, with COCO's rules: a detection of a class the
    reference has no box of in the whole set costs nothing (that class is
    not scored); every detection of an image counts (no 100-box cut).

    Args:
        reference (Sequence[dict]): Per image, the reference detector's
            ``bboxes`` / ``scores`` / ``labels`` (see :func:`detect`).
        detections (Sequence[dict]): The same for the model measured, on
            the same images in the same order.
        score_thr (float): Reference score from which a box counts as an
            object.

    Returns:
        float: mAP@[0.5:0.95] in [0, 1]; 0 when nothing is detected.

    Raises:
        ValueError: On a length mismatch, or when no reference box reaches
            ``score_thr`` (nothing to measure against).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if len(reference) != len(detections):
        raise ValueError(f'{len(reference)} reference images but '
                         f'{len(detections)} detected ones')
    images, annotations, results, labels = [], [], [], set()
    most = 100
    for img_id, (ref, det) in enumerate(zip(reference, detections)):
        images.append(dict(id=img_id))
        # a box without area can match nothing: it is not an object
        keep = (ref['scores'] >= score_thr) & _has_area(ref['bboxes'])
        for box, label in zip(_coco_boxes(ref['bboxes'][keep]),
                              ref['labels'][keep].tolist()):
            annotations.append(
                dict(id=len(annotations) + 1, image_id=img_id,
                     category_id=int(label), bbox=box,
                     area=box[2] * box[3], iscrowd=0))
            labels.add(int(label))
        for box, score, label in zip(_coco_boxes(det['bboxes']),
                                     det['scores'].tolist(),
                                     det['labels'].tolist()):
            results.append(dict(image_id=img_id, category_id=int(label),
                                bbox=box, score=float(score)))
        most = max(most, len(det['scores']))
    if not annotations:
        raise ValueError(f'no reference box scores {score_thr} or more: '
                         'nothing to measure agreement against (lower '
                         'score_thr, or use images the reference detector '
                         'finds objects in)')
    labels |= {r['category_id'] for r in results}
    gt = COCO()
    gt.dataset = dict(info={}, images=images, annotations=annotations,
                      categories=[dict(id=c) for c in sorted(labels)])
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        if not results:
            return 0.
        dt = gt.loadRes(results)
        coco_eval = COCOeval(gt, dt, 'bbox')
        # every detection counts (COCO's default keeps 100 per image)
        coco_eval.params.maxDets = [1, 10, most]
        coco_eval.evaluate()
        coco_eval.accumulate()
    # what ``summarize`` reports as AP@[.5:.95] (area "all"), at the last
    # maxDets (summarize itself only looks up 100): precision over IoU
    # thresholds x recall points x scored classes
    precision = coco_eval.eval['precision'][:, :, :, 0, -1]
    scored = precision[precision > -1]
    return float(scored.mean()) if scored.size else 0.


__all__ = ['agreement_map', 'detect']
