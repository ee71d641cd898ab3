"""The part of an OpenMMLab model that goes into the ONNX graph.

Only the network (tensor in, tensors out) is exported. What stays outside
the graph, in the caller's code:

- the data preprocessor (mean/std normalisation, channel order, padding):
  the graph's input is the normalised batch;
- classifiers: the softmax (the graph returns the logits);
- one-stage detectors (RetinaNet & co.): anchor generation, box decoding,
  score thresholding and NMS (the graph returns the head's raw per-level
  class scores and box deltas);
- two-stage detectors (Faster R-CNN & co.): the graph holds backbone, neck
  and RPN head (raw per-level objectness and deltas); proposal decoding,
  NMS, RoIAlign and the RoI head stay outside.
"""
from typing import List, Sequence

import torch
from torch import nn

from mmddaq.utils.nested import flatten_tensors


class ClassifierNetwork(nn.Module):
    """Logits of an mmpretrain-style classifier (``mode='tensor'``).

    Args:
        model (nn.Module): The classifier.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return tuple(flatten_tensors(self.model(x, mode='tensor')))

    def output_names(self, num_outputs: int) -> List[str]:
        """Names of the graph's outputs."""
        if num_outputs == 1:
            return ['logits']
        return [f'output_{i}' for i in range(num_outputs)]


class DenseHeadNetwork(nn.Module):
    """Backbone, neck and a dense head's raw per-level outputs.

    Args:
        model (nn.Module): An mmdet detector.
        head (str): Attribute name of the dense head: ``'bbox_head'``
            (one-stage) or ``'rpn_head'`` (first stage of a two-stage
            detector).
        names (Sequence[str]): Names of the head's output groups, e.g.
            ``('cls_score', 'bbox_pred')``.
    """

    def __init__(self, model: nn.Module, head: str,
                 names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.names = tuple(names)

    def forward(self, x: torch.Tensor):
        feats = self.model.extract_feat(x)
        return tuple(flatten_tensors(getattr(self.model, self.head)(feats)))

    def output_names(self, num_outputs: int) -> List[str]:
        """``<group>_l<level>`` for each output (level-major per group)."""
        groups = len(self.names)
        if num_outputs % groups:
            return [f'output_{i}' for i in range(num_outputs)]
        levels = num_outputs // groups
        return [f'{g}_l{i}' for g in self.names for i in range(levels)]


def network_of(model: nn.Module) -> nn.Module:
    """Wrap ``model`` into the network the exporter puts into the graph.

    Args:
        model (nn.Module): An mmpretrain classifier or mmdet detector
            (float or fake-quantized).

    Returns:
        nn.Module: :class:`ClassifierNetwork` or :class:`DenseHeadNetwork`.
    """
    if hasattr(model, 'extract_feat') and getattr(model, 'rpn_head',
                                                  None) is not None:
        return DenseHeadNetwork(model, 'rpn_head',
                                ('rpn_cls_score', 'rpn_bbox_pred'))
    if hasattr(model, 'extract_feat') and getattr(model, 'bbox_head',
                                                  None) is not None:
        return DenseHeadNetwork(model, 'bbox_head',
                                ('cls_score', 'bbox_pred'))
    if hasattr(model, 'extract_feat') and hasattr(model, 'head'):
        return ClassifierNetwork(model)
    raise TypeError(
        f'Do not know which part of {type(model).__name__} to export: '
        'expected an mmpretrain classifier (extract_feat + head) or an '
        'mmdet detector (extract_feat + bbox_head / rpn_head).')
