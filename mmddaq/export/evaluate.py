"""The test metric of an exported model, measured through onnxruntime.

The ONNX graph holds the network only (:mod:`mmddaq.export.networks`): the
data preprocessor runs before it and the post-processing (a classifier's
prediction, a detector's box decoding and NMS) after it. This module feeds
each test batch through the model's own data preprocessor, the graph in
onnxruntime and the model's own post-processing, then into the config's own
test evaluator, so the metric is the one a deployment of the graph gets.
"""
from typing import Dict, List, Sequence

import torch
from mmengine.evaluator import Evaluator
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.utils import ProgressBar
from torch import nn

from mmddaq.apis.metrics import complete_metrics
from .networks import (DenseHeadNetwork, TwoStageNetwork, is_two_stage,
                       network_of)
from .onnx_export import onnxruntime_session, roi_head_path, run_onnxruntime


class OnnxRuntimeModel:
    """An OpenMMLab model whose network runs in onnxruntime.

    Every layer with weights runs in onnxruntime; what runs in PyTorch is
    the model's own weight-free code between and after the graphs: a
    classifier's prediction, a one-stage detector's box decoding and NMS,
    and for a two-stage detector proposal decoding, NMS and RoIAlign
    between its two graphs (see :mod:`mmddaq.export.networks`).

    Args:
        model (nn.Module): The model the graph was exported from (its data
            preprocessor and post-processing are used).
        session (onnxruntime.InferenceSession): The exported graph.
        roi_session (onnxruntime.InferenceSession, optional): A two-stage
            detector's RoI-head graph.
    """

    def __init__(self, model: nn.Module, session, roi_session=None) -> None:
        network = network_of(model)
        if isinstance(network, TwoStageNetwork) and roi_session is None:
            raise ValueError('a two-stage detector needs its RoI-head graph '
                             '(roi_session) too')
        self.model = model.eval()
        self.network = network
        self.session = session
        self.roi_session = roi_session

    def _two_stage(self, outputs: List[torch.Tensor],
                   samples: Sequence) -> list:
        """Proposals and RoIAlign in PyTorch, the RoI head in onnxruntime,
        then mmdet's own box decoding (as ``StandardRoIHead.predict``)."""
        from mmdet.models.utils import empty_instances
        from mmdet.structures.bbox import bbox2roi
        model = self.model
        scores, deltas, feats = TwoStageNetwork.split_outputs(outputs)
        metas = [s.metainfo for s in samples]
        proposals = model.rpn_head.predict_by_feat(
            scores, deltas, batch_img_metas=metas, rescale=False)
        boxes = [p.bboxes for p in proposals]
        rois = bbox2roi(boxes)
        roi_head = model.roi_head
        if rois.shape[0] == 0:
            results = empty_instances(
                metas, rois.device, task_type='bbox',
                box_type=roi_head.bbox_head.predict_box_type,
                num_classes=roi_head.bbox_head.num_classes,
                score_per_cls=False)
        else:
            extractor = roi_head.bbox_roi_extractor
            roi_feats = extractor(feats[:extractor.num_inputs], rois)
            cls_score, bbox_pred = [
                torch.from_numpy(o)
                for o in run_onnxruntime(self.roi_session, roi_feats)
            ]
            counts = tuple(len(b) for b in boxes)
            results = roi_head.bbox_head.predict_by_feat(
                rois=rois.split(counts, 0),
                cls_scores=cls_score.split(counts, 0),
                bbox_preds=bbox_pred.split(counts, 0),
                batch_img_metas=metas,
                rcnn_test_cfg=roi_head.test_cfg,
                rescale=True)
        return model.add_pred_to_datasample(samples, results)

    def _postprocess(self, outputs: List[torch.Tensor],
                     samples: Sequence) -> list:
        if isinstance(self.network, TwoStageNetwork):
            return self._two_stage(outputs, samples)
        if not isinstance(self.network, DenseHeadNetwork):
            return self.model.head._get_predictions(outputs[0], samples)
        groups = len(self.network.names)
        levels = len(outputs) // groups
        head = getattr(self.model, self.network.head)
        results = head.predict_by_feat(
            *[outputs[g * levels:(g + 1) * levels] for g in range(groups)],
            batch_img_metas=[s.metainfo for s in samples],
            rescale=True)
        return self.model.add_pred_to_datasample(samples, results)

    @torch.no_grad()
    def test_step(self, data: dict) -> list:
        """Predictions of one test batch, like ``model.test_step``."""
        data = self.model.data_preprocessor(data, False)
        outputs = [
            torch.from_numpy(o)
            for o in run_onnxruntime(self.session, data['inputs'])
        ]
        return self._postprocess(outputs, data['data_samples'])


def evaluate_onnx(cfg, model: nn.Module, onnx_file: str,
                  quantize_bias: bool = True) -> Dict[str, float]:
    """The test metric of ``onnx_file`` on the config's test split.

    Args:
        cfg (Config): The config with ``test_dataloader`` and
            ``test_evaluator`` (e.g. the quantization config).
        model (nn.Module): The (quantized) model the file was exported from.
        onnx_file (str): The exported graph (a two-stage detector's
            RoI-head graph is read from next to it, see
            :func:`~mmddaq.export.onnx_export.roi_head_path`).
        quantize_bias (bool): onnxruntime's own bias quantization pass on
            (its default) or off (what mmddaq recommends; see
            :func:`mmddaq.export.onnx_export.onnxruntime_session`).

    Returns:
        dict: The evaluator's metrics (missing detection metrics as 0).
    """
    session = onnxruntime_session(onnx_file, quantize_bias=quantize_bias)
    roi_session = None
    if is_two_stage(model):
        roi_session = onnxruntime_session(roi_head_path(onnx_file),
                                          quantize_bias=quantize_bias)
    backed = OnnxRuntimeModel(model, session, roi_session)
    scope = cfg.get('default_scope') or 'mmengine'
    with DefaultScope.overwrite_default_scope(scope):
        loader = Runner.build_dataloader(cfg.test_dataloader)
        evaluator = Evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = getattr(loader.dataset, 'metainfo', None)
        bar = ProgressBar(len(loader))
        for data in loader:
            evaluator.process(backed.test_step(data), data)
            bar.update()
        metrics = evaluator.evaluate(len(loader.dataset))
    return complete_metrics(metrics, cfg.get('test_evaluator'))


__all__ = ['OnnxRuntimeModel', 'evaluate_onnx']
