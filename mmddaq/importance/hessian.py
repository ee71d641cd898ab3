"""Hessian-trace sensitivity (HAWQ-v2 style) of each quantized layer."""
from typing import Dict

import torch

from mmddaq.registry import IMPORTANCE
from .base import BaseImportance, quantized_layer_names


@IMPORTANCE.register_module()
class HessianImportance(BaseImportance):
    """``mean Hessian trace x ||Q(W) - W||^2`` per layer.

    The trace of each layer's block of the Hessian of the FP model's loss
    is estimated with Hutchinson's method (``E[v^T H v]`` over Rademacher
    ``v``) on data-free samples; the loss is the task adapter's
    ``self_loss`` (for classifiers, cross-entropy against the model's own
    predictions). Multiplying the mean trace by the weight's quantization
    error gives the expected loss increase of quantizing that layer.

    Args:
        batch_size (int): Samples per batch. Defaults to 32.
        num_batches (int): Batches of samples. Defaults to 2.
        num_probes (int): Hutchinson probes per batch. Defaults to 8.
    """

    def __init__(self,
                 batch_size: int = 32,
                 num_batches: int = 2,
                 num_probes: int = 8) -> None:
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.num_probes = num_probes

    def score(self, fp_model, quantized_model, sample_fn,
              adapter) -> Dict[str, float]:
        names = quantized_layer_names(quantized_model)
        params = [fp_model.get_submodule(n).weight for n in names]
        flags = [p.requires_grad for p in params]
        traces = [0.] * len(names)
        try:
            for p in params:
                p.requires_grad_(True)
            for _ in range(self.num_batches):
                x = sample_fn(self.batch_size)
                loss = adapter.self_loss(adapter.forward(fp_model, x))
                grads = torch.autograd.grad(loss, params, create_graph=True)
                for _ in range(self.num_probes):
                    vs = [torch.randint_like(p, 2) * 2 - 1 for p in params]
                    hvs = torch.autograd.grad(
                        grads, params, grad_outputs=vs, retain_graph=True)
                    for i, (v, hv) in enumerate(zip(vs, hvs)):
                        traces[i] += float((v * hv).sum())
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
                p.grad = None
        total = self.num_batches * self.num_probes
        scores = {}
        with torch.no_grad():
            for name, p, trace in zip(names, params, traces):
                q_layer = quantized_model.get_submodule(name)
                err = (q_layer.weight_quantizer(p) - p).pow(2).sum()
                scores[name] = abs(trace / total) / p.numel() * float(err)
        return scores
