"""Generator of synthetic inputs in a model's normalised input space."""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn

from mmddaq.registry import MODELS

#: Taps of the 4-tap transposed-convolution kernel that nearest 2x
#: upsampling followed by a 3-tap (padding 1) kernel amounts to, per axis:
#: output row 2i reads input rows i-1 (tap 0) and i (taps 1 + 2), output row
#: 2i+1 reads rows i (taps 0 + 1) and i+1 (tap 2).
_UPSAMPLE_FOLD = ((0., 0., 1.), (0., 1., 1.), (1., 1., 0.), (1., 0., 0.))


class UpsampleConv2d(nn.Conv2d):
    """Nearest 2x upsampling followed by a 3x3 convolution (padding 1).

    The same function as ``nn.Upsample(scale_factor=2)`` then
    ``nn.Conv2d(in_channels, out_channels, 3, padding=1)`` with this
    module's weight and bias, computed as one stride-2 transposed
    convolution with a 4x4 kernel folded from the 3x3 one: 4 instead of 9
    multiply-accumulates per output and input channel, and no upsampled
    tensor (forward and backward take about half the time on CPU).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        bias (bool): Learn a bias. Defaults to True.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def folded_weight(self) -> torch.Tensor:
        """The ``(in, out, 4, 4)`` transposed-convolution kernel."""
        fold = self.weight.new_tensor(_UPSAMPLE_FOLD)
        return torch.einsum('rk,ockl,sl->cors', fold, self.weight, fold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(x, self.folded_weight(), self.bias,
                                  stride=2, padding=1)


def _pair_of_bounds(value_range) -> tuple:
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        hint = " ('pixels' is resolved by mmddaq.DDAQ from its data " \
            'preprocessor)' if isinstance(value_range, str) else ''
        raise ValueError('value_range must be (low, high), got '
                         f'{value_range!r}{hint}')
    return tuple(value_range)


@MODELS.register_module()
class Generator(BaseModule):
    """GDFQ-style upsampling generator, class-conditional or not.

    ``z`` (times a learned label embedding when ``num_classes`` is set) is
    projected to a small feature map, then each block doubles its size
    (nearest upsampling and a 3x3 conv, as one :class:`UpsampleConv2d`; BN,
    LeakyReLU). A final conv, ``tanh``
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
        value_range (tuple, optional): ``(low, high)`` bounds of the
            generated values, each a float or one per channel: the last
            ``tanh`` is mapped onto them (no BatchNorm after it), so every
            sample is a valid input, e.g. the normalised image of 0-255
            pixels (:meth:`pixel_range`). ``None`` (default): ``tanh`` and an
            affine-free BatchNorm (GDFQ's output).
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
                 value_range: Optional[Sequence] = None,
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
                UpsampleConv2d(channels, out),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, inplace=True)
            ]
            channels = out
        self.blocks = nn.Sequential(*blocks)
        last = [nn.Conv2d(channels, out_channels, 3, padding=1), nn.Tanh()]
        if value_range is None:
            last.append(nn.BatchNorm2d(out_channels, affine=False))
        self.to_img = nn.Sequential(*last)
        self.value_range = None
        if value_range is not None:
            low, high = (torch.as_tensor(v, dtype=torch.float32).flatten()
                         for v in _pair_of_bounds(value_range))
            low, high = (v.expand(out_channels).clone()
                         if v.numel() == 1 else v for v in (low, high))
            if low.numel() != out_channels or high.numel() != out_channels:
                raise ValueError(
                    f'value_range needs 1 or {out_channels} bounds per side, '
                    f'got {low.numel()} and {high.numel()}')
            if not bool((high > low).all()):
                raise ValueError(f'value_range: every high must exceed its '
                                 f'low, got {low.tolist()} / {high.tolist()}')
            self.value_range = (low.tolist(), high.tolist())
            # tanh in [-1, 1] -> [low, high] per channel
            self.register_buffer('_out_mid', ((high + low) / 2).view(
                1, -1, 1, 1), persistent=False)
            self.register_buffer('_out_half', ((high - low) / 2).view(
                1, -1, 1, 1), persistent=False)

    @staticmethod
    def pixel_range(mean: Sequence[float],
                    std: Sequence[float],
                    max_value: float = 255.) -> Tuple[list, list]:
        """``value_range`` of images of pixels in ``[0, max_value]`` after
        a data preprocessor's ``(x - mean) / std``.

        Args:
            mean (Sequence[float]): Per-channel mean of the preprocessor.
            std (Sequence[float]): Per-channel std of the preprocessor.
            max_value (float): Largest pixel value. Defaults to 255.

        Returns:
            tuple[list, list]: Per-channel low and high bounds.
        """
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        return ((-mean / std).tolist(),
                ((max_value - mean) / std).tolist())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before ``UpsampleConv2d`` hold four modules per
        # block (upsample, conv, BN, activation): conv 4k+1 and BN 4k+2 are
        # now 3k and 3k+1.
        blocks = prefix + 'blocks.'
        first = state_dict.get(blocks + '1.weight')
        if blocks + '0.weight' not in state_dict and first is not None \
                and first.dim() == 4:
            for key in [k for k in state_dict if k.startswith(blocks)]:
                index, rest = key[len(blocks):].split('.', 1)
                old = int(index)
                state_dict[f'{blocks}{old - 1 - old // 4}.{rest}'] = \
                    state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        x = self.to_img(x)
        if self.value_range is not None:
            x = torch.addcmul(self._out_mid, x, self._out_half)
        return x
