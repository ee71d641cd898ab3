"""Test metrics that exist even when a detector predicts nothing.

mmdet's ``CocoMetric`` returns an empty dict when no image has a single
box: a quantized detector that collapsed would then crash every tool that
reads ``coco/bbox_mAP``. Such a model scores 0, which is a result.
"""
import logging
from typing import Dict, List

from mmengine.logging import print_log
from mmengine.runner import Runner

#: The keys CocoMetric reports per metric type (bbox, segm, ...).
COCO_KEYS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')


def expected_metric_keys(evaluator) -> List[str]:
    """Keys a test evaluator config reports, where they are known.

    Args:
        evaluator (dict | list): The ``test_evaluator`` config.

    Returns:
        list[str]: ``coco/bbox_mAP``-style keys of every ``CocoMetric``
        (other metric types are not listed).
    """
    if isinstance(evaluator, dict) and 'metrics' in evaluator:
        evaluator = evaluator['metrics']
    metrics = evaluator if isinstance(evaluator, (list, tuple)) \
        else [evaluator]
    keys = []
    for m in metrics:
        if not isinstance(m, dict) or \
                str(m.get('type', '')).split('.')[-1] != 'CocoMetric':
            continue
        kinds = m.get('metric', 'bbox')
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        prefix = m.get('prefix') or 'coco'
        keys += [f'{prefix}/{kind}_{k}' for kind in kinds for k in COCO_KEYS
                 if kind != 'proposal_fast']
    return keys


def complete_metrics(metrics: Dict[str, float], evaluator) -> Dict[str,
                                                                   float]:
    """``metrics`` with every missing detection metric set to 0 (and a
    warning that the model predicted no box)."""
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    missing = [k for k in expected_metric_keys(evaluator)
               if k not in metrics]
    if missing:
        print_log(
            'The model predicted no box on the test set (every score is '
            'below the test score threshold): recording '
            f'{", ".join(missing[:2])}{", ..." if len(missing) > 2 else ""} '
            '= 0.', logger='current', level=logging.WARNING)
        metrics.update({k: 0. for k in missing})
    return metrics


def run_test(runner: Runner) -> Dict[str, float]:
    """``runner.test()`` with missing detection metrics recorded as 0."""
    return complete_metrics(runner.test(),
                            runner.cfg.get('test_evaluator'))


__all__ = ['complete_metrics', 'expected_metric_keys', 'run_test']
