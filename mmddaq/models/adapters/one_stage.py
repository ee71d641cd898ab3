"""How DDAQ runs and compares one-stage detectors (RetinaNet, ...)."""
from typing import Dict

import torch
from torch import nn

from mmddaq.registry import MODELS
from mmddaq.losses import dense_class_prior
from .detector_base import DetectorAdapterBase, dense_kd


@MODELS.register_module()
class OneStageDetectorAdapter(DetectorAdapterBase):
    """Task adapter for mmdet single-stage detectors.

    The outputs are the dense head's class scores and box regressions for
    every FPN level; KD compares them level by level (sigmoid BCE or
    softmax KL for scores, smooth L1 for boxes). Post-processing (box
    decoding, NMS) is not part of training and stays in floating point.

    Args:
        taps (Sequence[str], optional): Submodules compared by D2; defaults
            to backbone stages, ``neck`` and ``bbox_head``.
        box_weight (float): Weight of the box KD term. Defaults to 1.
        kd_weighting (str): ``'confidence'`` (default): each anchor counts
            by the FP model's top class probability, normalised per level;
            ``'uniform'``: a plain mean over anchors and classes.
        prior_topk (int): Anchors per generated image that the detection
            prior (:meth:`task_loss`) pushes towards its label.
        feature_weight (float): Weight of the FPN features' KD (per-level
            normalised) in :meth:`distill_loss`. Defaults to 0.
    """

    head_taps = ('bbox_head', )

    def forward(self, model: nn.Module, inputs: torch.Tensor,
                reference=None) -> Dict[str, list]:
        """Per-level head outputs of ``model`` for normalised ``inputs``."""
        feats = model.extract_feat(inputs)
        head = model.bbox_head
        cls_scores, bbox_preds = head(feats)[:2]
        return self._outputs(
            feats, cls_scores=list(cls_scores), bbox_preds=list(bbox_preds),
            cls_out_channels=int(head.cls_out_channels),
            use_sigmoid=bool(getattr(head, 'use_sigmoid_cls', True)))

    def task_loss(self, fp_out: Dict[str, list],
                  labels: torch.Tensor) -> torch.Tensor:
        """The FP head should detect each image's label: its ``prior_topk``
        best anchors for that class, over all levels, towards score 1."""
        if not fp_out['use_sigmoid']:
            raise NotImplementedError(
                'the detection prior needs a sigmoid-scored dense head '
                '(RetinaNet-style); this head scores with a softmax')
        return dense_class_prior(fp_out['cls_scores'], labels,
                                 fp_out['cls_out_channels'], self.prior_topk)

    def distill_loss(self, fp_out: Dict[str, list],
                     q_out: Dict[str, list]) -> torch.Tensor:
        """Mean over levels of score KD + ``box_weight`` x box KD
        (anchors weighted by the FP model's confidence by default), plus
        the FPN features' KD when ``feature_weight`` > 0."""
        return self._plus_feature_kd(
            dense_kd(fp_out['cls_scores'], q_out['cls_scores'],
                     fp_out['bbox_preds'], q_out['bbox_preds'],
                     self.box_weight, self.kd_weighting), fp_out, q_out)
