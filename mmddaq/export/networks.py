"""The part of an OpenMMLab model that goes into the ONNX graph.

Only the network (tensor in, tensors out) is exported. What stays outside
the graph, in the caller's code:

- the data preprocessor (mean/std normalisation, channel order, padding):
  the graph's input is the normalised batch;
- classifiers: the softmax (the graph returns the logits);
- one-stage detectors (RetinaNet & co.): anchor generation, box decoding,
  score thresholding and NMS (the graph returns the head's raw per-level
  class scores and box deltas);
- two-stage detectors (Faster R-CNN & co.): two graphs. The first holds
  backbone, neck and RPN head and returns the raw per-level objectness and
  deltas *and* the neck's feature maps; proposal decoding, NMS and RoIAlign
  run outside on them (they hold no weights, nothing is quantized there);
  the second graph, the RoI box head, takes the pooled RoI features and
  returns class scores and box deltas, decoded and NMS-ed outside.
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


class TwoStageNetwork(DenseHeadNetwork):
    """First graph of a two-stage detector: RPN outputs and neck features.

    Args:
        model (nn.Module): An mmdet two-stage detector.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, 'rpn_head',
                         ('rpn_cls_score', 'rpn_bbox_pred'))

    def forward(self, x: torch.Tensor):
        feats = self.model.extract_feat(x)
        return tuple(flatten_tensors(self.model.rpn_head(feats))) + \
            tuple(feats)

    def output_names(self, num_outputs: int) -> List[str]:
        """``rpn_cls_score_l<i>``, ``rpn_bbox_pred_l<i>``, ``neck_l<i>``."""
        if num_outputs % 3:
            return [f'output_{i}' for i in range(num_outputs)]
        levels = num_outputs // 3
        return [f'{g}_l{i}' for g in self.names + ('neck', )
                for i in range(levels)]

    @staticmethod
    def split_outputs(outputs: Sequence) -> tuple:
        """``(rpn scores, rpn deltas, neck features)``, each per level."""
        levels = len(outputs) // 3
        return (list(outputs[:levels]), list(outputs[levels:2 * levels]),
                list(outputs[2 * levels:]))


class RoIHeadNetwork(nn.Module):
    """Second graph of a two-stage detector: the RoI box head.

    Its input is the RoI extractor's pooled features ``(R, C, S, S)``; its
    outputs the class scores ``(R, C + 1)`` and box deltas.

    Args:
        model (nn.Module): An mmdet two-stage detector (standard RoI head
            without a shared head).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        roi_head = model.roi_head
        extractor = getattr(roi_head, 'bbox_roi_extractor', None)
        if getattr(roi_head, 'with_shared_head', False) or \
                getattr(roi_head, 'with_mask', False) or \
                not isinstance(extractor, nn.Module) or \
                isinstance(extractor, nn.ModuleList):
            raise NotImplementedError(
                f'{type(roi_head).__name__}: only a standard RoI head (one '
                'RoI extractor + one box head, no shared head, no mask '
                'head) exports as a graph')
        self.bbox_head = roi_head.bbox_head

    def forward(self, roi_feats: torch.Tensor):
        return tuple(flatten_tensors(self.bbox_head(roi_feats)))

    def output_names(self, num_outputs: int) -> List[str]:
        """``cls_score`` and ``bbox_pred``."""
        if num_outputs == 2:
            return ['cls_score', 'bbox_pred']
        return [f'output_{i}' for i in range(num_outputs)]

    @staticmethod
    def input_shape(model: nn.Module) -> tuple:
        """``(1, C, S, S)``: one pooled RoI of ``model``'s extractor."""
        extractor = model.roi_head.bbox_roi_extractor
        size = extractor.roi_layers[0].output_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return (1, int(extractor.out_channels)) + tuple(int(s) for s in size)


def is_two_stage(model: nn.Module) -> bool:
    """Whether ``model`` is an mmdet detector with an RPN and a RoI head."""
    return hasattr(model, 'extract_feat') and \
        getattr(model, 'rpn_head', None) is not None and \
        getattr(model, 'roi_head', None) is not None


def network_of(model: nn.Module) -> nn.Module:
    """Wrap ``model`` into the network the exporter puts into the graph.

    Args:
        model (nn.Module): An mmpretrain classifier or mmdet detector
            (float or fake-quantized).

    Returns:
        nn.Module: :class:`ClassifierNetwork`, :class:`DenseHeadNetwork`
        or, for a two-stage detector, its first graph
        :class:`TwoStageNetwork` (the second is :class:`RoIHeadNetwork`).
    """
    if is_two_stage(model):
        return TwoStageNetwork(model)
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
