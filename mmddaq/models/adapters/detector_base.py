"""What the one-stage and two-stage detector adapters share."""
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mmddaq.losses import check_topk
from mmddaq.utils.nested import detach_nested


def score_kd(fp_scores: torch.Tensor, q_scores: torch.Tensor,
             use_sigmoid: bool) -> torch.Tensor:
    """Distance of class scores: BCE on sigmoids or KL on softmaxes.

    Args:
        fp_scores (Tensor): FP logits (targets; detached here).
        q_scores (Tensor): Quantized logits, same shape.
        use_sigmoid (bool): Per-class sigmoid scores (RetinaNet, RPN) if
            True, softmax over the class dimension (dim 1) otherwise.

    Returns:
        Tensor: Mean loss per score.
    """
    target = fp_scores.detach()
    if use_sigmoid:
        return F.binary_cross_entropy_with_logits(
            q_scores, target.sigmoid(), reduction='mean') - \
            F.binary_cross_entropy_with_logits(
                target, target.sigmoid(), reduction='mean')
    return F.kl_div(
        F.log_softmax(q_scores, dim=1),
        F.softmax(target, dim=1),
        reduction='batchmean')


def box_kd(fp_boxes: torch.Tensor, q_boxes: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 distance of box regression outputs (deltas)."""
    return F.smooth_l1_loss(q_boxes, fp_boxes.detach(), beta=1.0 / 9)


KD_WEIGHTINGS = ('confidence', 'uniform')


def _check_weighting(weighting: str) -> str:
    if weighting not in KD_WEIGHTINGS:
        raise ValueError(f'kd_weighting must be one of {KD_WEIGHTINGS}, got '
                         f'"{weighting}"')
    return weighting


def confident_dense_kd(fp_s: torch.Tensor, q_s: torch.Tensor,
                       fp_b: torch.Tensor, q_b: torch.Tensor,
                       box_weight: float, eps: float = 1e-6) -> torch.Tensor:
    """One level's KD, each anchor weighted by the teacher's confidence.

    Almost every anchor of a dense head is background: a plain mean over
    anchors x classes is dominated by it. Here each anchor counts by the FP
    model's highest class probability there, normalised by the weights'
    sum, for both the score term (Bernoulli KL per class) and the box term
    (smooth-L1 over the 4 deltas), so a level's loss does not shrink with
    the number of background anchors it has.

    Args:
        fp_s (Tensor): FP class logits ``(N, A*C, H, W)`` (sigmoid).
        q_s (Tensor): Quantized class logits, same shape.
        fp_b (Tensor): FP box deltas ``(N, A*4, H, W)``.
        q_b (Tensor): Quantized box deltas, same shape.
        box_weight (float): Weight of the box term.

    Returns:
        Tensor: The level's loss.
    """
    n, _, h, w = fp_s.shape
    anchors = fp_b.shape[1] // 4
    target = fp_s.detach().float().reshape(n, anchors, -1, h, w)
    q = q_s.float().reshape(n, anchors, -1, h, w)
    p = target.sigmoid()
    weight = p.amax(dim=2)  # (N, A, H, W)
    norm = weight.sum() + eps
    kl = F.binary_cross_entropy_with_logits(q, p, reduction='none') - \
        F.binary_cross_entropy_with_logits(target, p, reduction='none')
    score = (kl.sum(dim=2) * weight).sum() / norm
    box = F.smooth_l1_loss(
        q_b.float().reshape(n, anchors, 4, h, w),
        fp_b.detach().float().reshape(n, anchors, 4, h, w),
        beta=1.0 / 9, reduction='none').sum(dim=2)
    return score + box_weight * (box * weight).sum() / norm


def confident_roi_kd(fp_cls: torch.Tensor, q_cls: torch.Tensor,
                     fp_box: torch.Tensor, q_box: torch.Tensor,
                     box_weight: float, eps: float = 1e-6) -> torch.Tensor:
    """RoI-head KD, each RoI weighted by the FP model's foreground
    probability (1 - background, the last softmax class), normalised by the
    weights' sum.

    Args:
        fp_cls (Tensor): FP logits ``(R, C + 1)``.
        q_cls (Tensor): Quantized logits, same shape.
        fp_box (Tensor): FP box deltas ``(R, 4 or 4C)``.
        q_box (Tensor): Quantized box deltas, same shape.
        box_weight (float): Weight of the box term.
    """
    target = F.softmax(fp_cls.detach().float(), dim=1)
    weight = 1. - target[:, -1]
    norm = weight.sum() + eps
    kl = (target * (target.clamp_min(1e-12).log() -
                    F.log_softmax(q_cls.float(), dim=1))).sum(dim=1)
    box = F.smooth_l1_loss(q_box.float(), fp_box.detach().float(),
                           beta=1.0 / 9, reduction='none').sum(dim=1)
    return ((kl + box_weight * box) * weight).sum() / norm


def dense_kd(fp_scores: List[torch.Tensor], q_scores: List[torch.Tensor],
             fp_boxes: List[torch.Tensor], q_boxes: List[torch.Tensor],
             box_weight: float, weighting: str = 'uniform') -> torch.Tensor:
    """KD of a dense head's per-level outputs, averaged over levels.

    Args:
        fp_scores (list[Tensor]): FP class logits per level (sigmoid).
        q_scores (list[Tensor]): Quantized class logits per level.
        fp_boxes (list[Tensor]): FP box deltas per level.
        q_boxes (list[Tensor]): Quantized box deltas per level.
        box_weight (float): Weight of the box term.
        weighting (str): ``'confidence'`` (see :func:`confident_dense_kd`)
            or ``'uniform'`` (a plain mean over anchors and classes).

    Returns:
        Tensor: The loss.
    """
    _check_weighting(weighting)
    loss = 0.
    for fp_s, q_s, fp_b, q_b in zip(fp_scores, q_scores, fp_boxes, q_boxes):
        if weighting == 'confidence':
            loss = loss + confident_dense_kd(fp_s, q_s, fp_b, q_b,
                                             box_weight)
        else:
            loss = loss + score_kd(fp_s, q_s, use_sigmoid=True) + \
                box_weight * box_kd(fp_b, q_b)
    return loss / len(fp_scores)


def feature_kd(fp_feats: Sequence[torch.Tensor],
               q_feats: Sequence[torch.Tensor],
               eps: float = 1e-12) -> torch.Tensor:
    """KD of the neck's (FPN's) feature maps, every level counting alike.

    Per level, the mean squared difference relative to the FP features'
    mean square, then averaged over levels: a coarse level whose features
    are 10x larger does not drown the fine ones where small objects are.

    Args:
        fp_feats (Sequence[Tensor]): FP features per level.
        q_feats (Sequence[Tensor]): Quantized features, same shapes.
        eps (float): Keeps an all-zero level finite.

    Returns:
        Tensor: The loss (0 for identical features).
    """
    if len(fp_feats) != len(q_feats) or not fp_feats:
        raise ValueError(f'feature KD needs the same levels on both sides, '
                         f'got {len(fp_feats)} and {len(q_feats)}')
    loss = 0.
    for fp, q in zip(fp_feats, q_feats):
        fp = fp.detach().float()
        loss = loss + (q.float() - fp).pow(2).mean() / (
            fp.pow(2).mean() + eps)
    return loss / len(fp_feats)


def roi_kd(fp_cls: torch.Tensor, q_cls: torch.Tensor, fp_box: torch.Tensor,
           q_box: torch.Tensor, box_weight: float,
           weighting: str = 'uniform') -> torch.Tensor:
    """KD of a RoI head's class scores (softmax) and box deltas.

    Args:
        weighting (str): ``'confidence'`` (see :func:`confident_roi_kd`)
            or ``'uniform'`` (plain means over RoIs).
        The other arguments are those of :func:`confident_roi_kd`.
    """
    if _check_weighting(weighting) == 'confidence':
        return confident_roi_kd(fp_cls, q_cls, fp_box, q_box, box_weight)
    return score_kd(fp_cls, q_cls, use_sigmoid=False) + \
        box_weight * box_kd(fp_box, q_box)


@torch.no_grad()
def confident_anchor_share(cls_scores: List[torch.Tensor],
                           score_thr: float = 0.05) -> float:
    """Share of anchor positions where some class scores above
    ``score_thr`` (sigmoid), over every level: how much of an input a dense
    detector sees as an object.

    Args:
        cls_scores (list[Tensor]): Class logits per level,
            ``(N, A*C, H, W)``.
        score_thr (float): Score threshold. Defaults to 0.05.
    """
    hits, total = 0, 0
    for s in cls_scores:
        p = s.float().sigmoid()
        hits += int((p.amax(dim=1) > score_thr).sum())
        total += p.shape[0] * p.shape[2] * p.shape[3]
    return hits / max(total, 1)


@torch.no_grad()
def dense_score_map(cls_scores: List[torch.Tensor],
                    size) -> torch.Tensor:
    """Where a dense head sees objects: at each input pixel, the highest
    sigmoid score of any class, anchor and level covering it.

    Args:
        cls_scores (list[Tensor]): Class (or objectness) logits per level,
            ``(N, A*C, H, W)``.
        size (tuple[int, int]): Input height and width.

    Returns:
        Tensor: ``(N, 1, H_in, W_in)`` scores in [0, 1].
    """
    out = None
    for s in cls_scores:
        level = s.float().sigmoid().amax(dim=1, keepdim=True)
        level = F.interpolate(level, size=tuple(size), mode='nearest')
        out = level if out is None else torch.maximum(out, level)
    return out


def synthetic_img_metas(inputs: torch.Tensor) -> List[dict]:
    """Image metas for generated inputs: unpadded, unscaled images."""
    h, w = inputs.shape[-2:]
    return [
        dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
             batch_input_shape=(h, w), scale_factor=(1., 1.))
        for _ in range(inputs.shape[0])
    ]


class DetectorAdapterBase:
    """Task adapter for mmdet detectors: shared parts.

    The adapter's :meth:`forward` returns a dict of named head outputs;
    :meth:`distill_loss` sums the score and box terms over them. A
    class-conditional generator (``num_classes`` = the detector's classes,
    loss weight ``ce`` > 0) gets a detection prior from :meth:`task_loss`:
    the FP detector should find an object of each image's label in it.

    Args:
        taps (Sequence[str], optional): Submodules compared by D2.
            Defaults to the backbone stages, the neck and the heads.
        box_weight (float): Weight of the box-regression KD term.
            Defaults to 1.
        kd_weighting (str): ``'confidence'`` or ``'uniform'`` KD.
        prior_topk (int): Anchors (or RoIs) per generated image that the
            detection prior pushes towards the image's label. Defaults
            to 8.
        feature_weight (float): Weight of the neck features' KD
            (:func:`feature_kd`) added to :meth:`distill_loss`. Defaults
            to 0 (outputs only).
    """

    #: head submodules whose outputs are tapped by default
    head_taps: Sequence[str] = ()
    #: forward-output key of the dense per-level scores (score_map)
    dense_scores_key: str = 'cls_scores'

    def __init__(self, taps: Sequence[str] = None,
                 box_weight: float = 1.0,
                 kd_weighting: str = 'confidence',
                 prior_topk: int = 8,
                 feature_weight: float = 0.) -> None:
        self.taps = list(taps) if taps else None
        self.box_weight = box_weight
        self.kd_weighting = _check_weighting(kd_weighting)
        self.prior_topk = check_topk(prior_topk)
        if feature_weight < 0:
            raise ValueError(
                f'feature_weight must be >= 0, got {feature_weight}')
        self.feature_weight = float(feature_weight)

    def _outputs(self, feats, **outputs) -> Dict[str, object]:
        """The forward's outputs, with the neck features when their KD is
        on."""
        if self.feature_weight:
            outputs['feats'] = list(feats)
        return outputs

    def _plus_feature_kd(self, loss: torch.Tensor, fp_out, q_out):
        """``loss`` + the weighted feature KD (when on)."""
        if not self.feature_weight:
            return loss
        if 'feats' not in fp_out or 'feats' not in q_out:
            raise KeyError('feature_weight > 0 but an output lacks the neck '
                           'features: run both models through this adapter')
        return loss + self.feature_weight * feature_kd(fp_out['feats'],
                                                       q_out['feats'])

    def default_taps(self, model: nn.Module) -> List[str]:
        """Backbone stages, the neck and the heads of ``model``."""
        if self.taps:
            return self.taps
        modules = dict(model.named_modules())
        taps = []
        if 'backbone' in modules:
            taps += [
                f'backbone.{n}' for n, _ in model.backbone.named_children()
                if n.startswith('layer')
            ]
        if 'neck' in modules:
            taps.append('neck')
        taps += [t for t in self.head_taps if t in modules]
        return taps

    def score_map(self, fp_out: Dict[str, object],
                  inputs: torch.Tensor) -> torch.Tensor:
        """``(N, 1, H, W)`` map of where the FP detector sees objects in
        ``inputs`` (block reconstruction's ``focus`` weights positions by
        it): its dense head's best sigmoid score per pixel."""
        key = self.dense_scores_key
        return dense_score_map(fp_out[key], inputs.shape[-2:])

    @staticmethod
    def num_classes(model: nn.Module):
        """Object classes of the detector (what a conditional generator's
        labels must range over), or None if unknown."""
        for head in ('bbox_head', 'roi_head'):
            module = getattr(model, head, None)
            module = getattr(module, 'bbox_head', module)
            if getattr(module, 'num_classes', None):
                return int(module.num_classes)
        return None

    def task_loss(self, fp_out: Dict[str, object],
                  labels: torch.Tensor) -> torch.Tensor:
        """Detection prior of a class-conditional generator (see
        :mod:`mmddaq.losses.detection_prior`); per detector family."""
        raise NotImplementedError

    def self_loss(self, out: Dict[str, object]) -> torch.Tensor:
        """Distillation of the outputs towards themselves (for Hessians).

        Its gradient is zero at the current weights; its Hessian is the
        Gauss-Newton matrix of the outputs, which is what the layer
        sensitivity needs.
        """
        return self.distill_loss(detach_nested(out), out)

    def output_distance(self, ref, out) -> torch.Tensor:
        """How far ``out`` is from the reference outputs ``ref``."""
        return self.distill_loss(ref, out)
