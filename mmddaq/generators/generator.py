"""Generator of synthetic inputs in a model's normalised input space."""
from typing import Optional, Sequence, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import nn

from mmddaq.registry import MODELS


@MODELS.register_module()
class Generator(BaseModule):
    """GDFQ-style upsampling generator, class-conditional or not.

    ``z`` (times a learned label embedding when ``num_classes`` is set) is
    projected to a small feature map, then each block doubles its size
    (nearest upsampling, 3x3 conv, BN, LeakyReLU). A final conv, ``tanh``
    and an affine-free BatchNorm give roughly zero-mean, unit-variance
    channels: the statistics of inputs after a model's data preprocessor.

    Args:
        img_size (int | Sequence[int]): Output height and width (each must
            be divisible by ``2 ** num_upsamples``).
        out_channels (int): Channels of the generated image. Defaults to 3.
        latent_dim (int): Size of the noise vector. Defaults to 100.
        num_classes (int, optional): Number of classes of a conditional
            generator; ``None`` for an unconditional one (detectors).
        base_channels (int): Channels of the first feature map; halved in
            the last block. Defaults to 128.
        num_upsamples (int): Number of 2x upsampling blocks. Defaults to 2.
        taper_size (int, optional): Size the generator to the resolution:
            a block whose output side exceeds ``taper_size`` pixels gets
            ``base_channels * taper_size / side`` channels (at least
            ``min_channels``), so every high-resolution block costs about
            what the last full-width one does. ``None`` (default): every
            block has ``base_channels``, the last one half.
        min_channels (int): Fewest channels of a tapered block.
            Defaults to 8.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 img_size: Union[int, Sequence[int]] = 32,
                 out_channels: int = 3,
                 latent_dim: int = 100,
                 num_classes: Optional[int] = None,
                 base_channels: int = 128,
                 num_upsamples: int = 2,
                 taper_size: Optional[int] = None,
                 min_channels: int = 8,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        factor = 2**num_upsamples
        if h % factor or w % factor:
            raise ValueError(f'img_size {(h, w)} must be divisible by '
                             f'2**num_upsamples = {factor}')
        self.img_size = (h, w)
        self.latent_dim = latent_dim
        self.num_classes = num_classes
        self.init_hw = (h // factor, w // factor)
        self.label_emb = nn.Embedding(num_classes, latent_dim) \
            if num_classes else None
        self.fc = nn.Linear(latent_dim,
                            base_channels * self.init_hw[0] * self.init_hw[1])
        self.bn0 = nn.BatchNorm2d(base_channels)
        blocks = []
        channels = base_channels
        for i in range(num_upsamples):
            out = base_channels // 2 if i == num_upsamples - 1 \
                else base_channels
            side = max(self.init_hw) * 2**(i + 1)
            if taper_size is not None and side > taper_size:
                out = max(int(min_channels),
                          base_channels * int(taper_size) // side)
            blocks += [
                nn.Upsample(scale_factor=2),
                nn.Conv2d(channels, out, 3, padding=1),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True)
            ]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.to_img = nn.Sequential(
            nn.Conv2d(channels, out_channels, 3, padding=1), nn.Tanh(),
            nn.BatchNorm2d(out_channels, affine=False))

    def sample_noise(
            self,
            batch_size: int,
            device: Union[str, torch.device] = 'cpu',
            generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Draw noise (and uniform labels for a conditional generator).

        Args:
            batch_size (int): Number of samples.
            device (str | torch.device): Device of the tensors.
            generator (torch.Generator, optional): Random source.

        Returns:
            tuple[Tensor, Tensor | None]: ``z`` and the labels or None.
        """
        z = torch.randn(
            batch_size, self.latent_dim, device=device, generator=generator)
        labels = None
        if self.num_classes:
            labels = torch.randint(
                0,
                self.num_classes, (batch_size, ),
                device=device,
                generator=generator)
        return z, labels

    def forward(self,
                z: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Generate images from noise ``z`` (and ``labels``).

        Args:
            z (Tensor): ``(N, latent_dim)`` noise.
            labels (Tensor, optional): ``(N,)`` class indices; required by
                a conditional generator.

        Returns:
            Tensor: ``(N, out_channels, H, W)`` images.
        """
        if self.label_emb is not None:
            if labels is None:
                raise ValueError('a class-conditional Generator needs labels')
            z = z * self.label_emb(labels)
        x = self.fc(z).view(z.shape[0], -1, *self.init_hw)
        x = self.blocks(self.bn0(x))
        return self.to_img(x)
