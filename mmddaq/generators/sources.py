"""Sample sources: where a pool of calibration/reconstruction inputs comes
from. Each returns batches in the model's normalised input space."""
from typing import List

import torch
from mmengine.runner import Runner

from mmddaq.registry import SAMPLE_SOURCES


@SAMPLE_SOURCES.register_module()
class AlgorithmSamples:
    """Batches from the algorithm's own sample source.

    That is the trained generator (``sample_source='generator'``), Gaussian
    noise (``'gaussian'``) or the distilled pool (``'pool'``) of the
    :class:`~mmddaq.models.DDAQ` model. Generator batches are drawn with
    the generator in training mode (batch statistics, as it was trained).
    """

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        batches = []
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            x, _ = algorithm.sample_inputs(n)
            batches.append(x.detach())
        return batches


@SAMPLE_SOURCES.register_module()
class GaussianSamples:
    """Standard normal noise in the normalised input space."""

    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        device = algorithm.device_of()
        return [
            torch.randn(min(batch_size, num_samples - s),
                        *algorithm.input_shape, device=device)
            for s in range(0, num_samples, batch_size)
        ]


@SAMPLE_SOURCES.register_module()
class RealSamples:
    """Real images from a dataloader config (not data-free: an upper bound).

    Args:
        dataloader (dict): An MMEngine dataloader config (e.g. the model's
            training split without augmentation).
        strict (bool): Raise when the dataloader holds fewer images than
            asked for; otherwise return those it has. Defaults to True.
    """

    def __init__(self, dataloader: dict, strict: bool = True) -> None:
        self.dataloader = dataloader
        self.strict = strict

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        loader = Runner.build_dataloader(self.dataloader)
        inputs, count = [], 0
        for data in loader:
            x = algorithm.data_preprocessor(data, False)['inputs']
            inputs.append(x)
            count += len(x)
            if count >= num_samples:
                break
        if count < num_samples and self.strict:
            raise ValueError(f'the dataloader holds {count} images, fewer '
                             f'than the {num_samples} asked for')
        pool = torch.cat(inputs)[:num_samples]
        return list(pool.split(batch_size))
