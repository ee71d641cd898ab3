"""A deterministic, offline COCO-format detection set of coloured shapes.

Filled circles, squares, triangles, stars and crosses of random colour, size
and rotation are painted, possibly overlapping, onto random crops of the
photographs that ship inside scikit-image. Boxes are the tight boxes of the
pixels of each object that stay visible once later objects are painted over
it; objects left mostly hidden are removed from the layout before painting,
so every painted pixel belongs to an annotated object.

Nothing is downloaded and the same arguments always give the same pixels and
a byte-identical annotation file. Image ``i`` of a split only depends on the
split's seed and ``i``, so a small set is a prefix of a larger one.
"""
import colorsys
import functools
import json
import os
import os.path as osp
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SHAPES_CLASSES = ('circle', 'square', 'triangle', 'star', 'cross')
#: every class the generator can paint; a set with ``num_classes=n`` uses
#: the first ``n`` (the default 5 are :data:`SHAPES_CLASSES`)
ALL_SHAPES_CLASSES = SHAPES_CLASSES + ('hexagon', 'ring', 'half_disc',
                                       'arrow', 'ell')
#: visualization colours of the classes (RGB)
SHAPES_PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 180, 0),
                  (145, 30, 180), (70, 240, 240), (240, 50, 230),
                  (210, 245, 60), (0, 128, 128), (170, 110, 40)]

#: Generation settings of the harder "small shapes" set of the frozen-BN
#: detection testbeds: twice the classes, objects of 8-24 px, 2-8 per image.
SMALL_SHAPES = dict(num_classes=10, min_objects=2, max_objects=8,
                    min_size=8, max_size=24)

#: Lossless (PNG) photographs bundled in the scikit-image package itself, so
#: they load offline and decode to the same pixels everywhere. The JPEG ones
#: (``rocket``, ``hubble_deep_field``, ``retina``) are left out on purpose:
#: JPEG decoders may differ by a grey level between builds.
BACKGROUND_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'camera', 'coins',
                     'moon', 'grass', 'gravel', 'brick',
                     'immunohistochemistry')

#: default seed of each named split; other split names hash their name
DEFAULT_SEEDS = dict(train=0, val=1, test=2)

#: bumped whenever the same arguments would give different data
SHAPES_FORMAT_VERSION = 1

_NUM_COLOR_CANDIDATES = 8


def tune_options(data_root: str = 'data/shapes') -> dict:
    """Config overrides that evaluate a shapes config on its ``tune`` split
    (where recipes are chosen) instead of ``val``, in validation during
    training and in the final test.

    Args:
        data_root (str): Root of the set. Defaults to ``'data/shapes'``.

    Returns:
        dict: ``--cfg-options`` style overrides.
    """
    # validation during training too: a tune run never reads the reported
    # split
    ann = osp.join(data_root, 'annotations', 'instances_tune.json')
    return {
        f'{stage}_{key}': value
        for stage in ('val', 'test')
        for key, value in (('dataloader.dataset.ann_file',
                            'annotations/instances_tune.json'),
                           ('dataloader.dataset.data_prefix.img', 'tune/'),
                           ('evaluator.ann_file', ann))
    }


#: :func:`tune_options` of the default shapes set
SHAPES_TUNE_OPTIONS = tune_options()


def shapes_metainfo(num_classes: int = len(SHAPES_CLASSES)) -> dict:
    """Meta information of the shapes set for mmdet's ``CocoDataset``.

    Args:
        num_classes (int): Classes of the set. Defaults to 5.

    Returns:
        dict: ``dict(classes=(...), palette=[...])``.
    """
    return dict(classes=ALL_SHAPES_CLASSES[:num_classes],
                palette=list(SHAPES_PALETTE[:num_classes]))


def default_seed(split: str) -> int:
    """Default seed of a split: fixed for ``train/val/test``, else a hash.

    Args:
        split (str): Name of the split.

    Returns:
        int: The seed.
    """
    if split in DEFAULT_SEEDS:
        return DEFAULT_SEEDS[split]
    return zlib.crc32(split.encode('utf-8'))


def generation_params(split: str,
                      num_images: int,
                      img_size: int = 128,
                      seed: Optional[int] = None,
                      min_objects: int = 1,
                      max_objects: int = 4,
                      min_size: int = 12,
                      max_size: int = 48,
                      min_visible: float = 0.4,
                      num_classes: int = len(SHAPES_CLASSES)) -> dict:
    """Check and resolve the arguments of :func:`generate_shapes`.

    The result is stored in the annotation file (``info.params``) so a tool
    can tell whether an existing split was made with the same arguments.

    Args:
        See :func:`generate_shapes`.

    Returns:
        dict: The arguments with the default seed filled in.
    """
    if num_images < 0:
        raise ValueError(f'num_images must be >= 0, got {num_images}')
    if not 1 <= min_objects <= max_objects:
        raise ValueError('need 1 <= min_objects <= max_objects, got '
                         f'{min_objects} and {max_objects}')
    if not 4 <= min_size <= max_size <= img_size:
        raise ValueError('need 4 <= min_size <= max_size <= img_size, got '
                         f'{min_size}, {max_size} and {img_size}')
    if not 0. <= min_visible <= 1.:
        raise ValueError(f'min_visible must be in [0, 1], got {min_visible}')
    if not 1 <= num_classes <= len(ALL_SHAPES_CLASSES):
        raise ValueError(f'num_classes must be in [1, '
                         f'{len(ALL_SHAPES_CLASSES)}], got {num_classes}')
    params = dict(
        split=split,
        num_images=int(num_images),
        img_size=int(img_size),
        seed=int(default_seed(split) if seed is None else seed),
        min_objects=int(min_objects),
        max_objects=int(max_objects),
        min_size=int(min_size),
        max_size=int(max_size),
        min_visible=float(min_visible),
        backgrounds=list(BACKGROUND_PHOTOS))
    if num_classes != len(SHAPES_CLASSES):  # the 5-class files stay as they are
        params['num_classes'] = int(num_classes)
    return params


@functools.lru_cache(maxsize=1)
def load_backgrounds() -> Tuple[np.ndarray, ...]:
    """Load :data:`BACKGROUND_PHOTOS` from scikit-image as RGB uint8.

    Returns:
        tuple[np.ndarray]: One ``(H, W, 3)`` uint8 array per photograph.
    """
    from skimage import data

    photos = []
    for name in BACKGROUND_PHOTOS:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception as e:  # a trimmed scikit-image install
            raise RuntimeError(
                f'background photograph "{name}" does not load from '
                f'scikit-image ({type(e).__name__}: {e}); the shapes set '
                'needs all of BACKGROUND_PHOTOS to be reproducible') from e
        photos.append(_to_rgb_uint8(img))
    return tuple(photos)


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Convert a grey, RGB or RGBA uint8 image to RGB uint8."""
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def random_background(rng: np.random.Generator, photos: Sequence[np.ndarray],
                      img_size: int) -> np.ndarray:
    """Cut a random square crop of a random photo, resize and tint it.

    The crop side is log-uniform between ``0.75 * img_size`` (clipped to the
    photo) and the photo's short side, the crop is flipped left-right with
    probability 0.5 and each channel is scaled by a gain in ``[0.7, 1.3]``
    (so grey photographs get a colour cast too).

    Args:
        rng (np.random.Generator): Random generator.
        photos (Sequence[np.ndarray]): RGB uint8 photographs.
        img_size (int): Output height and width.

    Returns:
        np.ndarray: ``(img_size, img_size, 3)`` uint8 image.
    """
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    short = min(h, w)
    low = min(short, 0.75 * img_size)
    side = int(round(np.exp(rng.uniform(np.log(low), np.log(short)))))
    y0 = int(rng.integers(h - side + 1))
    x0 = int(rng.integers(w - side + 1))
    crop = photo[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize(
        (img_size, img_size), Image.BILINEAR)
    gains = rng.uniform(0.7, 1.3, size=3)
    tinted = np.asarray(resized, dtype=np.float64) * gains
    return np.clip(np.round(tinted), 0, 255).astype(np.uint8)


def _star_offsets(num_points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Vertices of a unit star pointing up, as ``(2 * num_points, 2)`` xy."""
    k = np.arange(2 * num_points)
    angles = -np.pi / 2 + k * np.pi / num_points
    radii = np.where(k % 2 == 0, 1., inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _regular_offsets(num_sides: int, phase: float) -> np.ndarray:
    """Vertices of a regular polygon of circumradius 1, as ``(n, 2)`` xy."""
    angles = phase + np.arange(num_sides) * 2 * np.pi / num_sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross_offsets(half_width: float = 1. / 3.) -> np.ndarray:
    """Vertices of a unit plus sign (arms reach 1), as ``(12, 2)`` xy."""
    a, b = half_width, 1.
    return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
                     (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)])


def _half_disc_offsets(num_points: int = 24) -> np.ndarray:
    """Vertices of a unit half disc (flat side down), as ``(n + 1, 2)``."""
    angles = np.linspace(-np.pi, 0., num_points + 1)
    return np.stack([np.cos(angles), np.sin(angles) + 0.5], axis=1)


def _arrow_offsets() -> np.ndarray:
    """Vertices of a unit arrow pointing right, as ``(7, 2)`` xy."""
    return np.array([(-1., -0.25), (0.2, -0.25), (0.2, -0.7), (1., 0.),
                     (0.2, 0.7), (0.2, 0.25), (-1., 0.25)])


def _ell_offsets() -> np.ndarray:
    """Vertices of a unit L (thick strokes), as ``(6, 2)`` xy."""
    s = 1. / np.sqrt(2.)
    return s * np.array([(-1., -1.), (-0.2, -1.), (-0.2, 0.2), (1., 0.2),
                         (1., 1.), (-1., 1.)])


#: unit polygons (circumradius 1, angle 0) of the polygonal classes
_UNIT_POLYGONS = dict(
    square=_regular_offsets(4, np.pi / 4),
    triangle=_regular_offsets(3, -np.pi / 2),
    star=_star_offsets(),
    cross=_cross_offsets(),
    hexagon=_regular_offsets(6, 0.),
    half_disc=_half_disc_offsets(),
    arrow=_arrow_offsets(),
    ell=_ell_offsets())

#: inner radius of a ring, as a share of its outer radius
_RING_INNER = 0.55


def object_mask(label: int, center: Tuple[float, float], radius: float,
                angle: float, img_size: int) -> np.ndarray:
    """Rasterize one shape.

    Args:
        label (int): Index into :data:`ALL_SHAPES_CLASSES`.
        center (tuple[float, float]): ``(x, y)`` centre in pixels.
        radius (float): Circumradius in pixels.
        angle (float): Rotation in radians (ignored for circles and
            rings).
        img_size (int): Height and width of the image.

    Returns:
        np.ndarray: ``(img_size, img_size)`` bool mask.
    """
    from skimage.draw import disk, polygon

    mask = np.zeros((img_size, img_size), dtype=bool)
    name = ALL_SHAPES_CLASSES[label]
    cx, cy = center
    if name in ('circle', 'ring'):
        rr, cc = disk((cy, cx), radius, shape=mask.shape)
        mask[rr, cc] = True
        if name == 'ring':
            rr, cc = disk((cy, cx), _RING_INNER * radius, shape=mask.shape)
            mask[rr, cc] = False
        return mask
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.array([[cos, -sin], [sin, cos]])
    xy = radius * _UNIT_POLYGONS[name] @ rot.T + np.array([cx, cy])
    rr, cc = polygon(xy[:, 1], xy[:, 0], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def sample_objects(rng: np.random.Generator,
                   num: int,
                   img_size: int,
                   min_size: int,
                   max_size: int,
                   num_classes: int = len(SHAPES_CLASSES)) -> List[dict]:
    """Draw the geometry of ``num`` objects, bottom first.

    Sizes (circumscribed diameters) are log-uniform in
    ``[min_size, max_size]``; every object lies fully inside the image.

    Args:
        rng (np.random.Generator): Random generator.
        num (int): Number of objects.
        img_size (int): Height and width of the image.
        min_size (int): Smallest diameter in pixels.
        max_size (int): Largest diameter in pixels.
        num_classes (int): Labels are drawn from ``range(num_classes)``.
            Defaults to 5.

    Returns:
        list[dict]: ``dict(label, mask)`` per object.
    """
    objects = []
    for _ in range(num):
        label = int(rng.integers(num_classes))
        size = np.exp(rng.uniform(np.log(min_size), np.log(max_size)))
        radius = size / 2
        center = tuple(rng.uniform(radius, img_size - radius, size=2))
        angle = rng.uniform(0, 2 * np.pi)
        mask = object_mask(label, center, radius, angle, img_size)
        objects.append(dict(label=label, mask=mask))
    return objects


def drop_occluded(objects: List[dict], min_visible: float) -> List[dict]:
    """Remove objects whose visible share is below ``min_visible``.

    Objects are removed one at a time, most hidden first, because removing
    one uncovers the ones below it. Kept objects get ``visible`` (bool mask
    of their pixels in the final image).

    Args:
        objects (list[dict]): Objects with ``mask``, bottom first.
        min_visible (float): Smallest visible share of an object's pixels.

    Returns:
        list[dict]: The kept objects, bottom first.
    """
    objects = [obj for obj in objects if obj['mask'].any()]
    while objects:
        owner = np.full(objects[0]['mask'].shape, -1, dtype=np.int64)
        for i, obj in enumerate(objects):
            owner[obj['mask']] = i
        shares = [(owner == i).sum() / obj['mask'].sum()
                  for i, obj in enumerate(objects)]
        worst = int(np.argmin(shares))
        if shares[worst] >= min_visible:
            break
        objects.pop(worst)
    for i, obj in enumerate(objects):
        obj['visible'] = owner == i
    return objects


def pick_color(rng: np.random.Generator, canvas: np.ndarray,
               mask: np.ndarray) -> Tuple[int, int, int]:
    """Pick a vivid colour that stands out from what lies under ``mask``.

    A fixed number of random HSV colours is drawn (so the random stream does
    not depend on the image) and the one farthest from the mean colour of
    ``canvas`` under ``mask`` is kept.

    Args:
        rng (np.random.Generator): Random generator.
        canvas (np.ndarray): ``(H, W, 3)`` uint8 image painted so far.
        mask (np.ndarray): ``(H, W)`` bool mask of the object.

    Returns:
        tuple[int, int, int]: RGB colour.
    """
    hsv = rng.uniform([0., 0.45, 0.35], [1., 1., 1.],
                      size=(_NUM_COLOR_CANDIDATES, 3))
    candidates = np.array([colorsys.hsv_to_rgb(*c) for c in hsv])
    candidates = np.round(candidates * 255)
    under = canvas[mask].astype(np.float64).mean(axis=0)
    best = int(np.argmax(np.linalg.norm(candidates - under, axis=1)))
    return tuple(int(v) for v in candidates[best])


def render_image(rng: np.random.Generator, photos: Sequence[np.ndarray],
                 img_size: int, num_objects: int, min_size: int,
                 max_size: int, min_visible: float,
                 num_classes: int = len(SHAPES_CLASSES)
                 ) -> Tuple[np.ndarray, list]:
    """Compose one image and its objects.

    Args:
        rng (np.random.Generator): Random generator of this image.
        photos (Sequence[np.ndarray]): Background photographs.
        img_size (int): Height and width.
        num_objects (int): Objects to place before occluded ones are dropped.
        min_size (int): Smallest object diameter.
        max_size (int): Largest object diameter.
        min_visible (float): Smallest visible share of a kept object.
        num_classes (int): Classes to draw from. Defaults to 5.

    Returns:
        tuple[np.ndarray, list[dict]]: ``(H, W, 3)`` uint8 RGB image and the
        kept objects (``label``, ``visible`` mask, ``color``), bottom first;
        the list is empty only if every layout attempt failed.
    """
    canvas = random_background(rng, photos, img_size)
    objects = []
    for _ in range(100):
        objects = drop_occluded(
            sample_objects(rng, num_objects, img_size, min_size, max_size,
                           num_classes), min_visible)
        if objects:
            break
    for obj in objects:
        obj['color'] = pick_color(rng, canvas, obj['mask'])
        canvas[obj['mask']] = obj['color']
    return canvas, objects


def coco_annotation(obj: dict, ann_id: int, img_id: int) -> dict:
    """COCO annotation of an object's visible pixels.

    Pixel ``(r, c)`` covers ``[c, c + 1) x [r, r + 1)``, so the box of
    visible columns ``c0..c1`` is ``x = c0, w = c1 - c0 + 1``.

    Args:
        obj (dict): Object with ``label``, ``visible`` and ``color``.
        ann_id (int): Annotation id (>= 1).
        img_id (int): Image id.

    Returns:
        dict: COCO annotation; ``color`` (RGB) is an extra field.
    """
    rows, cols = np.nonzero(obj['visible'])
    x0, y0 = int(cols.min()), int(rows.min())
    w, h = int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1
    return dict(
        id=ann_id,
        image_id=img_id,
        category_id=obj['label'] + 1,
        bbox=[x0, y0, w, h],
        area=int(obj['visible'].sum()),
        iscrowd=0,
        color=list(obj['color']))


def _write_png(path: str, img: np.ndarray) -> None:
    """Save an RGB uint8 array as PNG (deterministic bytes)."""
    from PIL import Image

    Image.fromarray(img).save(path, format='PNG')


def _dump_json(path: str, obj: dict) -> None:
    """Write JSON atomically (a complete file or none)."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, separators=(',', ':'))
        f.write('\n')
    os.replace(tmp, path)


def generate_shapes(out_dir: str,
                    split: str,
                    num_images: int,
                    img_size: int = 128,
                    seed: Optional[int] = None,
                    min_objects: int = 1,
                    max_objects: int = 4,
                    min_size: int = 12,
                    max_size: int = 48,
                    min_visible: float = 0.4,
                    num_classes: int = len(SHAPES_CLASSES)) -> dict:
    """Write one split of the shapes detection set in COCO format.

    Writes ``out_dir/{split}/{image_id:06d}.png`` (image ids start at 1) and,
    last, ``out_dir/annotations/instances_{split}.json``. Categories are
    the first ``num_classes`` of :data:`ALL_SHAPES_CLASSES`, ids from 1. Image ``i`` is drawn from
    ``np.random.default_rng([seed, i])``.

    Args:
        out_dir (str): Root of the set, e.g. ``'data/shapes'``.
        split (str): Split name, e.g. ``'train'`` or ``'val'``.
        num_images (int): Number of images.
        img_size (int): Image height and width. Defaults to 128.
        seed (int, optional): Seed of the split. Defaults to ``None``:
            0 for ``'train'``, 1 for ``'val'``, 2 for ``'test'``.
        min_objects (int): Fewest objects placed per image. Defaults to 1.
        max_objects (int): Most objects placed per image. Defaults to 4.
        min_size (int): Smallest object diameter in pixels. Defaults to 12.
        max_size (int): Largest object diameter in pixels. Defaults to 48.
        min_visible (float): Objects with a smaller visible share of their
            pixels are removed before painting. Defaults to 0.4.
        num_classes (int): Number of classes. Defaults to 5
            (:data:`SHAPES_CLASSES`).

    Returns:
        dict: The COCO annotation dict that was written.
    """
    params = generation_params(split, num_images, img_size, seed,
                               min_objects, max_objects, min_size, max_size,
                               min_visible, num_classes)
    photos = load_backgrounds()
    img_dir = osp.join(out_dir, split)
    ann_dir = osp.join(out_dir, 'annotations')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([params['seed'], index])
        num = int(rng.integers(min_objects, max_objects + 1))
        img, objects = render_image(rng, photos, img_size, num, min_size,
                                    max_size, min_visible, num_classes)
        if not objects:
            raise RuntimeError(f'no layout for image {index} of "{split}"')
        img_id = index + 1
        file_name = f'{img_id:06d}.png'
        _write_png(osp.join(img_dir, file_name), img)
        images.append(
            dict(id=img_id, file_name=file_name, width=img_size,
                 height=img_size))
        for obj in objects:
            annotations.append(
                coco_annotation(obj, len(annotations) + 1, img_id))

    coco = dict(
        info=dict(
            description='mmddaq synthetic shapes detection set',
            format_version=SHAPES_FORMAT_VERSION,
            params=params),
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(ALL_SHAPES_CLASSES[:num_classes])
        ])
    _dump_json(shapes_ann_file(out_dir, split), coco)
    return coco


def shapes_ann_file(out_dir: str, split: str) -> str:
    """Path of a split's annotation file.

    Args:
        out_dir (str): Root of the set.
        split (str): Split name.

    Returns:
        str: ``out_dir/annotations/instances_{split}.json``.
    """
    return osp.join(out_dir, 'annotations', f'instances_{split}.json')


def is_generated(out_dir: str, split: str, num_images: int,
                 **kwargs) -> bool:
    """Whether a split already exists as :func:`generate_shapes` would write.

    True when the annotation file exists, was written with the same
    generator version and arguments, lists ``num_images`` images and every
    listed image file exists.

    Args:
        out_dir (str): Root of the set.
        split (str): Split name.
        num_images (int): Expected number of images.
        **kwargs: Other arguments of :func:`generate_shapes`.

    Returns:
        bool: Whether the split can be reused.
    """
    ann_file = shapes_ann_file(out_dir, split)
    if not osp.isfile(ann_file):
        return False
    try:
        with open(ann_file, encoding='utf-8') as f:
            coco = json.load(f)
    except (OSError, ValueError):
        return False
    info = coco.get('info', {})
    expected = generation_params(split, num_images, **kwargs)
    if (info.get('format_version') != SHAPES_FORMAT_VERSION
            or info.get('params') != expected
            or len(coco.get('images', [])) != num_images):
        return False
    return all(
        osp.isfile(osp.join(out_dir, split, img['file_name']))
        for img in coco['images'])


def ensure_shapes(out_dir: str = 'data/shapes',
                  splits: Optional[Dict[str, int]] = None,
                  logger=print,
                  **kwargs) -> None:
    """Generate the default shapes splits that are missing or outdated.

    Args:
        out_dir (str): Root of the set. Defaults to ``'data/shapes'``.
        splits (dict[str, int], optional): Images per split. Defaults to
            800 train, 200 val (reported) and 200 tune images (where
            recipes are chosen), what the shapes configs expect.
        logger (Callable): Where progress messages go.
        **kwargs: Other arguments of :func:`generate_shapes`, e.g.
            ``**SMALL_SHAPES``.
    """
    splits = splits or dict(train=800, val=200, tune=200)
    for split, num_images in splits.items():
        if not is_generated(out_dir, split, num_images, **kwargs):
            logger(f'Generating the shapes {split} split ({num_images} '
                   f'images) into {out_dir}')
            generate_shapes(out_dir, split, num_images, **kwargs)


#: Where the frozen-BN testbeds' small-shapes set lives, and its splits.
SMALL_SHAPES_ROOT = 'data/shapes_small'
SMALL_SHAPES_SPLITS = dict(train=1000, val=200, tune=200)


def ensure_small_shapes(out_dir: str = SMALL_SHAPES_ROOT,
                        logger=print) -> None:
    """Generate the small-shapes set of the frozen-BN testbeds
    (:data:`SMALL_SHAPES`, :data:`SMALL_SHAPES_SPLITS`) where missing.

    Args:
        out_dir (str): Root of the set. Defaults to
            :data:`SMALL_SHAPES_ROOT`.
        logger (Callable): Where progress messages go.
    """
    ensure_shapes(out_dir, dict(SMALL_SHAPES_SPLITS), logger, **SMALL_SHAPES)
