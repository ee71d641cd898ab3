"""Every layer equally important (the ablation)."""
from mmddaq.registry import IMPORTANCE
from .base import BaseImportance, quantized_layer_names


@IMPORTANCE.register_module()
class UniformImportance(BaseImportance):
    """Weight 1 for every quantized layer."""

    def score(self, fp_model, quantized_model, sample_fn, adapter):
        return {n: 1.0 for n in quantized_layer_names(quantized_model)}
