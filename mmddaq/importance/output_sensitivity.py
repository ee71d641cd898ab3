"""ZeroQ-style output sensitivity of each quantized layer."""
from typing import Dict

import torch

from mmddaq.registry import IMPORTANCE
from .base import BaseImportance, quantized_layer_names


@IMPORTANCE.register_module()
class OutputSensitivityImportance(BaseImportance):
    """Output change when only one layer's weight is quantized.

    For each layer the FP model runs with that single weight replaced by
    its quantized version; the score is the task adapter's
    ``output_distance`` (KL for classifiers) to the FP outputs.

    Args:
        batch_size (int): Samples in the probe batch. Defaults to 32.
    """

    def __init__(self, batch_size: int = 32) -> None:
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, fp_model, quantized_model, sample_fn,
              adapter) -> Dict[str, float]:
        x = sample_fn(self.batch_size)
        reference = adapter.forward(fp_model, x)
        scores = {}
        for name in quantized_layer_names(quantized_model):
            weight = fp_model.get_submodule(name).weight
            original = weight.detach().clone()
            quantizer = quantized_model.get_submodule(name).weight_quantizer
            try:
                weight.copy_(quantizer(original))
                out = adapter.forward(fp_model, x, reference=reference)
            finally:
                weight.copy_(original)
            scores[name] = float(adapter.output_distance(reference, out))
        return scores
