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
from .networks import DenseHeadNetwork, network_of
from .onnx_export import onnxruntime_session, run_onnxruntime


class OnnxRuntimeModel:
    """An OpenMMLab model whose network runs in onnxruntime.

    Classifiers and one-stage detectors are supported: their graph ends
    where their post-processing starts. A two-stage detector's graph stops
    at the RPN, and its RoI head needs neck features the graph does not
    return, so it is refused.

    Args:
        model (nn.Module): The model the graph was exported from (its data
            preprocessor and post-processing are used).
        session (onnxruntime.InferenceSession): The exported graph.
    """

    def __init__(self, model: nn.Module, session) -> None:
        network = network_of(model)
        if isinstance(network, DenseHeadNetwork) and \
                network.head == 'rpn_head':
            raise NotImplementedError(
                'the test metric through onnxruntime needs the whole '
                'network in the graph; a two-stage detector\'s graph ends '
                'at the RPN (its RoI head runs outside on neck features the '
                'graph does not return)')
        self.model = model.eval()
        self.network = network
        self.session = session

    def _postprocess(self, outputs: List[torch.Tensor],
                     samples: Sequence) -> list:
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
        onnx_file (str): The exported graph.
        quantize_bias (bool): onnxruntime's own bias quantization pass on
            (its default) or off (what mmddaq recommends; see
            :func:`mmddaq.export.onnx_export.onnxruntime_session`).

    Returns:
        dict: The evaluator's metrics (missing detection metrics as 0).
    """
    session = onnxruntime_session(onnx_file, quantize_bias=quantize_bias)
    backed = OnnxRuntimeModel(model, session)
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
