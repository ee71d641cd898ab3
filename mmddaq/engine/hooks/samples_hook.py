"""Save a grid of generated samples every few iterations."""
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.hooks import Hook
from torchvision.utils import make_grid

from mmddaq.registry import HOOKS
from .utils import algorithm_of


def to_display(images: torch.Tensor, mean: Sequence[float],
               std: Sequence[float], nrow: int = 8) -> np.ndarray:
    """Turn normalised ``(N, C, H, W)`` inputs into an RGB uint8 grid."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    images = (images.detach().cpu() * std_t + mean_t).clamp(0, 255) / 255.
    grid = make_grid(images, nrow=nrow, padding=2, pad_value=1.)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@HOOKS.register_module()
class GeneratedSamplesHook(Hook):
    """Show what the generator produces, through MMEngine's Visualizer.

    Every ``interval`` iterations (and after training) a grid of
    ``num_samples`` generated inputs, mapped back to pixels with the data
    preprocessor's mean and std, goes to ``runner.visualizer.add_image``
    (``LocalVisBackend`` writes PNGs under ``{work_dir}/vis_data``).

    Args:
        interval (int): Iterations between grids. Defaults to 100.
        num_samples (int): Images per grid. Defaults to 32.
        mean (Sequence[float], optional): Pixel mean; defaults to the data
            preprocessor's.
        std (Sequence[float], optional): Pixel std; likewise.
    """

    priority = 'LOW'

    def __init__(self,
                 interval: int = 100,
                 num_samples: int = 32,
                 mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None) -> None:
        self.interval = interval
        self.num_samples = num_samples
        self.mean = mean
        self.std = std

    def _stats(self, model):
        pre = model.data_preprocessor
        mean = self.mean if self.mean is not None else \
            getattr(pre, 'mean', torch.zeros(3)).flatten().tolist()
        std = self.std if self.std is not None else \
            getattr(pre, 'std', torch.ones(3)).flatten().tolist()
        return mean, std

    def _save(self, runner, step: int) -> None:
        model = algorithm_of(runner)
        images = model.generate(self.num_samples)
        if images.shape[1] != 3:
            images = images[:, :1].repeat(1, 3, 1, 1)
        mean, std = self._stats(model)
        grid = to_display(images, mean, std)
        runner.visualizer.add_image('generated_samples', grid, step=step)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if self.every_n_train_iters(runner, self.interval):
            self._save(runner, runner.iter + 1)

    def after_train(self, runner) -> None:
        self._save(runner, runner.iter)
