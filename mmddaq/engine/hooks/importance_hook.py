"""Compute layer importance once, before data-free training starts."""
import json
import os.path as osp

import torch
from mmengine.dist import broadcast_object_list
from mmengine.hooks import Hook

from mmddaq.registry import HOOKS, IMPORTANCE
from .utils import algorithm_of


@HOOKS.register_module()
class LayerImportanceHook(Hook):
    """Score every quantized layer and hand the scores to the algorithm.

    Runs before the first iteration unless the model already carries
    importance (it is saved in checkpoints, so a resumed run keeps the
    values it started with). The scores are logged and written to
    ``{work_dir}/layer_importance.json``.

    In distributed training only rank 0 measures (each rank draws other
    samples) and broadcasts the scores, so every rank weights D1 and D2
    identically.

    Args:
        method (dict): Config of an importance strategy in the
            ``IMPORTANCE`` registry: ``HessianImportance`` (default),
            ``OutputSensitivityImportance`` or ``UniformImportance``.
        sample_source (str): Inputs used to measure: ``'gaussian'``
            (default) or ``'model'`` (the algorithm's own sample source).
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 method: dict = dict(type='HessianImportance'),
                 sample_source: str = 'gaussian') -> None:
        if sample_source not in ('gaussian', 'model'):
            raise ValueError(f'unknown sample_source "{sample_source}"')
        self.method = IMPORTANCE.build(method)
        self.sample_source = sample_source

    def before_train(self, runner) -> None:
        model = algorithm_of(runner)
        if model.layer_importance:
            runner.logger.info('Layer importance restored from checkpoint.')
            return
        device = model.device_of()

        def sample_fn(batch_size):
            if self.sample_source == 'model':
                return model.generate(batch_size)
            return torch.randn(batch_size, *model.input_shape, device=device)

        runner.logger.info(
            f'Computing layer importance with {type(self.method).__name__}')
        importance = None
        if runner.rank == 0:
            importance = self.method(model.fp_model, model.quantized,
                                     sample_fn, model.adapter)
        shared = [importance]
        broadcast_object_list(shared, src=0)
        importance = shared[0]
        model.set_layer_importance(importance)
        lines = [f'  {k}: {v:.3f}' for k, v in importance.items()]
        runner.logger.info('Layer importance (mean 1):\n' + '\n'.join(lines))
        if runner.rank == 0:
            with open(osp.join(runner.work_dir, 'layer_importance.json'),
                      'w') as f:
                json.dump(importance, f, indent=2)
