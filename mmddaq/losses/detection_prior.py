"""Detection prior for a class-conditional generator of detector inputs.

A generator steered by BN statistics alone draws textures the backbone's
pretraining saw, not scenes with objects; the FP detector's heads then see
background everywhere. With a class label per generated image, these losses
ask the FP detector to find objects of that class in it: the ``topk``
highest-scoring anchors (or RoIs) for the label are pushed towards a
confident detection. Different labels give different images, so the prior
also keeps the generator from collapsing onto one image.
"""
from typing import Sequence

import torch
from torch.nn import functional as F


def check_topk(topk: int) -> int:
    """``topk`` as an int, or a ValueError if it is below 1."""
    if int(topk) < 1:
        raise ValueError(f'topk must be >= 1, got {topk}')
    return int(topk)


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0
                           or int(labels.max()) >= num_classes):
        raise ValueError(
            f'generator labels must lie in [0, {num_classes}), got '
            f'{int(labels.min())}..{int(labels.max())}: the generator\'s '
            'num_classes must equal the detector\'s')


def dense_class_prior(cls_scores: Sequence[torch.Tensor],
                      labels: torch.Tensor,
                      num_classes: int,
                      topk: int = 8) -> torch.Tensor:
    """Prior of a dense sigmoid head: each image's ``topk`` anchors for its
    label, over every level, towards score 1.

    Args:
        cls_scores (Sequence[Tensor]): Class logits per level,
            ``(N, A*C, H, W)`` with ``C = num_classes``.
        labels (Tensor): ``(N,)`` class index of each image. A
            class-agnostic head (an RPN, ``num_classes=1``) takes zeros.
        num_classes (int): ``C``, the head's score channels per anchor.
        topk (int): Anchors per image that should detect the label.
            Defaults to 8.

    Returns:
        Tensor: Mean binary cross-entropy of those anchors towards 1.
    """
    topk = check_topk(topk)
    _check_labels(labels, num_classes)
    n = labels.shape[0]
    index = labels.long().view(n, 1, 1, 1)
    logits = []
    for s in cls_scores:
        _, ac, h, w = s.shape
        if ac % num_classes:
            raise ValueError(f'{ac} score channels are not a multiple of '
                             f'num_classes={num_classes}')
        per_class = s.reshape(n, ac // num_classes, num_classes, h * w)
        idx = index.expand(n, per_class.shape[1], 1, h * w)
        logits.append(per_class.gather(2, idx).reshape(n, -1))
    logits = torch.cat(logits, dim=1).float()
    best = logits.topk(min(topk, logits.shape[1]), dim=1).values
    return F.softplus(-best).mean()  # BCE towards 1 of the chosen anchors


def roi_class_prior(cls_score: torch.Tensor, rois_per_image: Sequence[int],
                    labels: torch.Tensor, topk: int = 8) -> torch.Tensor:
    """Prior of a softmax RoI head: each image's ``topk`` RoIs most likely
    of its label, towards that label (cross-entropy).

    Args:
        cls_score (Tensor): ``(R, C + 1)`` logits of every image's RoIs,
            concatenated in image order (background last, as in mmdet).
        rois_per_image (Sequence[int]): Number of RoIs of each image.
        labels (Tensor): ``(N,)`` class index of each image.
        topk (int): RoIs per image. Defaults to 8.

    Returns:
        Tensor: Mean cross-entropy over the chosen RoIs (0 without RoIs).
    """
    topk = check_topk(topk)
    _check_labels(labels, cls_score.shape[1] - 1)  # background is last
    losses = []
    for logits, label in zip(cls_score.float().split(list(rois_per_image)),
                             labels.long()):
        if logits.shape[0] == 0:
            continue
        log_p = F.log_softmax(logits, dim=1)[:, label]
        losses.append(-log_p.topk(min(topk, log_p.shape[0])).values.mean())
    if not losses:
        return cls_score.sum() * 0.
    return torch.stack(losses).mean()
