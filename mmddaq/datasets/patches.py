"""An offline image-classification set of photo patches, for pretraining.

Real detectors start from a backbone pretrained on a classification set and
train with its BatchNorm statistics frozen (``norm_eval=True``). The
frozen-BN detection testbeds copy that: their backbone is first trained to
tell which of the photographs bundled in scikit-image a random patch was cut
from (one class per photograph), then the detector is trained on the small
shapes set with that backbone's BN frozen. The patches are plain photo crops
(no shapes painted), so the frozen statistics describe other images than the
ones the detector sees.

The set is written as class folders (``{split}/{class}/{index:05d}.png``),
the layout mmpretrain's ``CustomDataset`` reads. Nothing is downloaded and
the same arguments always give the same pixels.
"""
import json
import os
import os.path as osp
from typing import Dict, Optional

import numpy as np

from .shapes import BACKGROUND_PHOTOS, default_seed, load_backgrounds

#: bumped whenever the same arguments would give different data
PATCHES_FORMAT_VERSION = 1
#: where the pretraining set lives, and its splits (patches per class)
PATCHES_ROOT = 'data/patches'
PATCHES_SPLITS = dict(train=400, val=50)


def patch_params(split: str, per_class: int, img_size: int = 64,
                 seed: Optional[int] = None) -> dict:
    """Check and resolve the arguments of :func:`generate_patches`.

    Args:
        See :func:`generate_patches`.

    Returns:
        dict: The arguments with the default seed filled in.
    """
    if per_class < 1:
        raise ValueError(f'per_class must be >= 1, got {per_class}')
    if img_size < 8:
        raise ValueError(f'img_size must be >= 8, got {img_size}')
    return dict(
        split=split, per_class=int(per_class), img_size=int(img_size),
        seed=int(default_seed(split) if seed is None else seed),
        classes=list(BACKGROUND_PHOTOS))


def random_patch(rng: np.random.Generator, photo: np.ndarray,
                 img_size: int) -> np.ndarray:
    """Cut one augmented square patch of a photograph.

    The side is log-uniform between ``img_size / 2`` and the photo's short
    side; the patch is flipped left-right with probability 0.5, turned by a
    random multiple of 90 degrees, made grey with probability 0.2 and each
    channel scaled by a gain in ``[0.7, 1.3]``.

    Args:
        rng (np.random.Generator): Random generator of this patch.
        photo (np.ndarray): ``(H, W, 3)`` uint8 photograph.
        img_size (int): Output height and width.

    Returns:
        np.ndarray: ``(img_size, img_size, 3)`` uint8 patch.
    """
    from PIL import Image

    h, w = photo.shape[:2]
    short = min(h, w)
    low = min(short, img_size / 2)
    side = int(round(np.exp(rng.uniform(np.log(low), np.log(short)))))
    y0 = int(rng.integers(h - side + 1))
    x0 = int(rng.integers(w - side + 1))
    crop = photo[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = np.rot90(crop, int(rng.integers(4)))
    patch = np.asarray(
        Image.fromarray(np.ascontiguousarray(crop)).resize(
            (img_size, img_size), Image.BILINEAR), dtype=np.float64)
    if rng.random() < 0.2:
        patch = np.repeat(patch.mean(axis=2, keepdims=True), 3, axis=2)
    patch = patch * rng.uniform(0.7, 1.3, size=3)
    return np.clip(np.round(patch), 0, 255).astype(np.uint8)


def _meta_file(out_dir: str, split: str) -> str:
    return osp.join(out_dir, f'{split}.json')


def generate_patches(out_dir: str, split: str, per_class: int,
                     img_size: int = 64, seed: Optional[int] = None) -> dict:
    """Write one split of the photo-patch classification set.

    Patch ``i`` of class ``c`` is drawn from
    ``np.random.default_rng([seed, c, i])``; the split's parameters are
    written last to ``out_dir/{split}.json``.

    Args:
        out_dir (str): Root of the set, e.g. ``'data/patches'``.
        split (str): Split name.
        per_class (int): Patches per class.
        img_size (int): Patch height and width. Defaults to 64.
        seed (int, optional): Seed of the split. Defaults to ``None``
            (the split's default seed, as for the shapes set).

    Returns:
        dict: The parameters that were written.
    """
    from PIL import Image

    params = patch_params(split, per_class, img_size, seed)
    for label, (name, photo) in enumerate(
            zip(BACKGROUND_PHOTOS, load_backgrounds())):
        folder = osp.join(out_dir, split, name)
        os.makedirs(folder, exist_ok=True)
        for index in range(per_class):
            rng = np.random.default_rng([params['seed'], label, index])
            Image.fromarray(random_patch(rng, photo, img_size)).save(
                osp.join(folder, f'{index:05d}.png'), format='PNG')
    meta = dict(format_version=PATCHES_FORMAT_VERSION, params=params)
    tmp = _meta_file(out_dir, split) + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(meta, f)
    os.replace(tmp, _meta_file(out_dir, split))
    return params


def patches_generated(out_dir: str, split: str, per_class: int,
                      **kwargs) -> bool:
    """Whether a split exists as :func:`generate_patches` would write it.

    Args:
        out_dir (str): Root of the set.
        split (str): Split name.
        per_class (int): Expected patches per class.
        **kwargs: Other arguments of :func:`generate_patches`.

    Returns:
        bool: Whether the split can be reused.
    """
    try:
        with open(_meta_file(out_dir, split), encoding='utf-8') as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    if (meta.get('format_version') != PATCHES_FORMAT_VERSION or
            meta.get('params') != patch_params(split, per_class, **kwargs)):
        return False
    return all(
        osp.isfile(osp.join(out_dir, split, name, f'{per_class - 1:05d}.png'))
        for name in BACKGROUND_PHOTOS)


def ensure_patches(out_dir: str = PATCHES_ROOT,
                   splits: Optional[Dict[str, int]] = None,
                   logger=print) -> None:
    """Generate the pretraining splits that are missing or outdated.

    Args:
        out_dir (str): Root of the set. Defaults to :data:`PATCHES_ROOT`.
        splits (dict[str, int], optional): Patches per class of each split.
            Defaults to :data:`PATCHES_SPLITS`.
        logger (Callable): Where progress messages go.
    """
    for split, per_class in (splits or PATCHES_SPLITS).items():
        if not patches_generated(out_dir, split, per_class):
            logger(f'Generating the photo-patch {split} split ({per_class} '
                   f'per class) into {out_dir}')
            generate_patches(out_dir, split, per_class)
