"""scikit-learn's bundled handwritten digits as an mmpretrain dataset."""
from typing import List

import numpy as np
import torch
from mmpretrain.datasets import BaseDataset
from torch.nn import functional as F

from mmddaq.registry import DATASETS

DIGITS_CLASSES = tuple(str(i) for i in range(10))


#: Images of the ``tune`` split, taken (stratified) out of the training part.
TUNE_SIZE = 270
SPLITS = ('train', 'tune', 'test')


def load_digits_split(split: str,
                      img_size: int = 32,
                      test_fraction: float = 0.3,
                      seed: int = 0):
    """Load a fixed split of :func:`sklearn.datasets.load_digits`.

    The 1,797 real 8x8 digits (values 0-16) are split once, stratified by
    class with a fixed seed, into ``test`` (540, the reported split) and a
    training part, which is split again into ``train`` (987, the FP
    model's training data) and ``tune`` (270, where quantization recipes
    are chosen). The three are disjoint. Images are scaled to 0-255,
    resized bilinearly to ``img_size`` and repeated over three channels.

    Args:
        split (str): ``'train'``, ``'tune'`` or ``'test'``.
        img_size (int): Output height and width. Defaults to 32.
        test_fraction (float): Share of the test split. Defaults to 0.3.
        seed (int): Seed of the split. Defaults to 0.

    Returns:
        tuple[np.ndarray, np.ndarray]: Images ``(N, H, W, 3)`` uint8 and
        labels ``(N,)`` int64.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got "{split}"')
    digits = load_digits()
    images = digits.images.astype(np.float32) * (255. / 16.)
    train_idx, test_idx = train_test_split(
        np.arange(len(images)),
        test_size=test_fraction,
        random_state=seed,
        stratify=digits.target)
    parts = dict(test=test_idx)
    if split != 'test':
        parts['train'], parts['tune'] = train_test_split(
            train_idx,
            test_size=TUNE_SIZE,
            random_state=seed,
            stratify=digits.target[train_idx])
    idx = np.sort(parts[split])
    x = torch.from_numpy(images[idx]).unsqueeze(1)
    x = F.interpolate(
        x, size=(img_size, img_size), mode='bilinear', align_corners=False)
    x = x.clamp(0, 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).numpy(), digits.target[idx].astype(np.int64)


@DATASETS.register_module()
class DigitsDataset(BaseDataset):
    """Handwritten digits shipped with scikit-learn, as 3-channel images.

    A small, real, offline classification set (987 train / 270 tune / 540
    test images in 10 classes) for trying quantization without downloads.

    Args:
        split (str): ``'train'``, ``'tune'`` or ``'test'``. Defaults to
            ``'train'``.
        img_size (int): Image height and width. Defaults to 32.
        pipeline (Sequence[dict]): Transforms; images are already decoded
            arrays in ``results['img']`` (BGR order is irrelevant: the
            three channels are equal).
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`.
    """

    METAINFO = dict(classes=DIGITS_CLASSES)

    def __init__(self,
                 split: str = 'train',
                 img_size: int = 32,
                 pipeline=(),
                 **kwargs) -> None:
        self.split = split
        self.img_size = img_size
        kwargs.setdefault('test_mode', split != 'train')
        super().__init__(ann_file='', pipeline=pipeline, **kwargs)

    def load_data_list(self) -> List[dict]:
        images, labels = load_digits_split(self.split, self.img_size)
        return [
            dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2],
                 gt_label=int(label))
            for img, label in zip(images, labels)
        ]
