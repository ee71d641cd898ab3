"""What the one-stage and two-stage detector adapters share."""
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F

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


def dense_kd(fp_scores: List[torch.Tensor], q_scores: List[torch.Tensor],
             fp_boxes: List[torch.Tensor], q_boxes: List[torch.Tensor],
             box_weight: float) -> torch.Tensor:
    """KD of a dense head's per-level outputs, averaged over levels.

    Args:
        fp_scores (list[Tensor]): FP class logits per level (sigmoid).
        q_scores (list[Tensor]): Quantized class logits per level.
        fp_boxes (list[Tensor]): FP box deltas per level.
        q_boxes (list[Tensor]): Quantized box deltas per level.
        box_weight (float): Weight of the box term.

    Returns:
        Tensor: The loss.
    """
    loss = 0.
    for fp_s, q_s, fp_b, q_b in zip(fp_scores, q_scores, fp_boxes, q_boxes):
        loss = loss + score_kd(fp_s, q_s, use_sigmoid=True) + \
            box_weight * box_kd(fp_b, q_b)
    return loss / len(fp_scores)


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

    Detectors have no labels to condition on; the generator is
    unconditional and the distillation compares head outputs. The
    adapter's :meth:`forward` returns a dict of named head outputs;
    :meth:`distill_loss` sums the score and box terms over them.

    Args:
        taps (Sequence[str], optional): Submodules compared by D2.
            Defaults to the backbone stages, the neck and the heads.
        box_weight (float): Weight of the box-regression KD term.
            Defaults to 1.
    """

    conditional = False
    #: head submodules whose outputs are tapped by default
    head_taps: Sequence[str] = ()

    def __init__(self, taps: Sequence[str] = None,
                 box_weight: float = 1.0) -> None:
        self.taps = list(taps) if taps else None
        self.box_weight = box_weight

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

    @staticmethod
    def task_loss(fp_out, labels):
        raise RuntimeError('detectors use an unconditional generator')

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
