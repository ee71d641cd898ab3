"""How DDAQ runs and compares two-stage detectors (Faster R-CNN, ...)."""
from typing import Dict

import torch
from torch import nn

from mmddaq.losses import dense_class_prior, roi_class_prior
from mmddaq.registry import MODELS
from .detector_base import (DetectorAdapterBase, dense_kd, roi_kd,
                            synthetic_img_metas)


@MODELS.register_module()
class TwoStageDetectorAdapter(DetectorAdapterBase):
    """Task adapter for mmdet two-stage detectors.

    Outputs are the RPN's per-level scores and box deltas and the RoI
    head's class scores and box deltas. To make RoI outputs comparable, the
    RoI head of *both* models runs on the FP model's proposals: the FP pass
    (no ``reference``) decodes proposals with the RPN's test settings (in
    floating point, no gradient) and returns them; the quantized pass gets
    them back as ``reference``.

    Args:
        taps (Sequence[str], optional): Submodules compared by D2; defaults
            to backbone stages, ``neck``, ``rpn_head`` and
            ``roi_head.bbox_head``.
        box_weight (float): Weight of the box KD terms. Defaults to 1.
        kd_weighting (str): ``'confidence'`` (default): RPN anchors and RoIs
            count by the FP model's foreground confidence (normalised by
            the weights' sum); ``'uniform'``: plain means.
        max_proposals (int): Proposals per image kept for distillation.
            Defaults to 256.
        prior_topk (int): Anchors and RoIs per generated image that the
            detection prior (:meth:`task_loss`) pushes towards an object
            of its label.
        feature_weight (float): Weight of the FPN features' KD (per-level
            normalised) in :meth:`distill_loss`. Defaults to 0.
    """

    head_taps = ('rpn_head', 'roi_head.bbox_head')
    dense_scores_key = 'rpn_scores'

    def __init__(self, taps=None, box_weight: float = 1.0,
                 max_proposals: int = 256,
                 kd_weighting: str = 'confidence',
                 prior_topk: int = 8,
                 feature_weight: float = 0.) -> None:
        super().__init__(taps, box_weight, kd_weighting, prior_topk,
                         feature_weight)
        self.max_proposals = max_proposals

    def forward(self, model: nn.Module, inputs: torch.Tensor,
                reference=None) -> Dict[str, object]:
        """RPN and RoI-head outputs; proposals from the FP pass."""
        feats = model.extract_feat(inputs)
        rpn_scores, rpn_deltas = model.rpn_head(feats)
        if reference is None:
            cfg = model.test_cfg.rpn.copy()
            cfg.max_per_img = min(cfg.get('max_per_img', 1000),
                                  self.max_proposals)
            with torch.no_grad():
                proposals = model.rpn_head.predict_by_feat(
                    [s.detach() for s in rpn_scores],
                    [d.detach() for d in rpn_deltas],
                    batch_img_metas=synthetic_img_metas(inputs),
                    cfg=cfg,
                    rescale=False)
            boxes = [p.bboxes for p in proposals]
        else:
            boxes = reference['proposals']
        # mmdet's box structures pull in mmcv's compiled ops: imported here
        # so classification works with mmcv-lite
        from mmdet.structures.bbox import bbox2roi
        rois = bbox2roi(boxes)
        roi_out = model.roi_head._bbox_forward(feats, rois)
        return self._outputs(
            feats,
            rpn_scores=list(rpn_scores),
            rpn_deltas=list(rpn_deltas),
            cls_score=roi_out['cls_score'],
            bbox_pred=roi_out['bbox_pred'],
            proposals=boxes)

    def task_loss(self, fp_out: Dict[str, object],
                  labels: torch.Tensor) -> torch.Tensor:
        """The FP detector should find each image's label: the RPN's
        ``prior_topk`` best anchors towards objectness 1, plus the RoI
        head's ``prior_topk`` RoIs most likely of the label towards it."""
        scores, deltas = fp_out['rpn_scores'], fp_out['rpn_deltas']
        per_anchor = scores[0].shape[1] // (deltas[0].shape[1] // 4)
        if per_anchor != 1:
            raise ValueError('the detection prior needs a sigmoid RPN (one '
                             f'score per anchor), got {per_anchor}')
        rpn = dense_class_prior(scores, torch.zeros_like(labels), 1,
                                self.prior_topk)
        counts = [len(b) for b in fp_out['proposals']]
        return rpn + roi_class_prior(fp_out['cls_score'], counts, labels,
                                     self.prior_topk)

    def distill_loss(self, fp_out: Dict[str, object],
                     q_out: Dict[str, object]) -> torch.Tensor:
        """RPN KD (mean over levels) + RoI-head KD on the same RoIs, plus
        the FPN features' KD when ``feature_weight`` > 0."""
        loss = dense_kd(fp_out['rpn_scores'], q_out['rpn_scores'],
                        fp_out['rpn_deltas'], q_out['rpn_deltas'],
                        self.box_weight, self.kd_weighting)
        if q_out['cls_score'].numel():
            # (no proposal survived: the RoI head has nothing to distil)
            loss = loss + roi_kd(fp_out['cls_score'], q_out['cls_score'],
                                 fp_out['bbox_pred'], q_out['bbox_pred'],
                                 self.box_weight, self.kd_weighting)
        return self._plus_feature_kd(loss, fp_out, q_out)
