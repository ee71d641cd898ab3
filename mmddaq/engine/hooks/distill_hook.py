"""Distil a fixed pool of inputs from BN statistics (ZeroQ-style)."""
import torch
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

from mmddaq.losses import BNStatisticsLoss
from mmddaq.registry import HOOKS
from .utils import algorithm_of


@HOOKS.register_module()
class DistilledSamplesHook(Hook):
    """Optimise ``num_samples`` inputs so the FP model's BN statistics match.

    The ZeroQ baseline: starting from Gaussian noise, the inputs themselves
    (no generator) are optimised with Adam to minimise the BN-statistics
    loss; the result becomes the algorithm's ``sample_pool``, from which
    calibration (and optionally fine-tuning) batches are drawn.

    Args:
        num_samples (int): Size of the pool. Defaults to 256.
        iters (int): Optimisation steps. Defaults to 200.
        lr (float): Adam learning rate. Defaults to 0.1.
        batch_size (int): Inputs optimised together. Defaults to 64.
    """

    priority = 'HIGH'

    def __init__(self,
                 num_samples: int = 256,
                 iters: int = 200,
                 lr: float = 0.1,
                 batch_size: int = 64) -> None:
        self.num_samples = num_samples
        self.iters = iters
        self.lr = lr
        self.batch_size = batch_size

    def before_train(self, runner) -> None:
        model = algorithm_of(runner)
        if model.sample_pool.numel():
            return
        device = model.device_of()
        loss_fn = BNStatisticsLoss(model.fp_model)
        pool = []
        runner.logger.info(f'Distilling {self.num_samples} inputs from BN '
                           f'statistics ({self.iters} steps per batch)')
        bar = ProgressBar(self.num_samples)
        try:
            for start in range(0, self.num_samples, self.batch_size):
                n = min(self.batch_size, self.num_samples - start)
                x = torch.randn(n, *model.input_shape, device=device)
                x.requires_grad_(True)
                opt = torch.optim.Adam([x], lr=self.lr)
                for _ in range(self.iters):
                    with loss_fn.recording():
                        model.adapter.forward(model.fp_model, x)
                    loss = loss_fn()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                pool.append(x.detach())
                bar.update(n)
        finally:
            loss_fn.remove()
        model.sample_pool = torch.cat(pool)
        runner.logger.info(f'Final BN-statistics loss {float(loss):.4f}')
