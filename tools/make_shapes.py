"""Write the offline "shapes" COCO detection set (train, val, tune splits).

    python tools/make_shapes.py [--out data/shapes] [--num-train 800]
                                [--num-val 200] [--num-tune 200]
                                [--img-size 128] [--force]
    python tools/make_shapes.py --preset small     # data/shapes_small
    python tools/make_shapes.py --preset patches   # data/patches

``--preset small`` writes the harder set of the frozen-BN testbeds (10
classes, 8-24 px objects) and ``--preset patches`` the photo-patch
classification set that pretrains their backbone, each with its fixed
settings.

A split is skipped when its annotation file exists, was written with the
same arguments and lists the requested number of images (all present);
``--force`` rewrites it anyway. The output is deterministic.
"""
import argparse
import os.path as osp
import sys
import time
from collections import Counter

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmddaq.datasets.patches import ensure_patches  # noqa: E402
from mmddaq.datasets.shapes import (SMALL_SHAPES,  # noqa: E402
                                    SMALL_SHAPES_ROOT, SMALL_SHAPES_SPLITS,
                                    generate_shapes, is_generated,
                                    shapes_ann_file)


def parse_args(argv=None):
    """Parse the command line.

    Args:
        argv (list[str], optional): Arguments. Defaults to ``sys.argv``.

    Returns:
        argparse.Namespace: The parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--preset', choices=('shapes', 'small', 'patches'), default='shapes',
        help='which set: the shapes testbeds\' (default, the options below '
        'apply), the frozen-BN testbeds\' small shapes, or their pretraining '
        'patches (fixed settings)')
    parser.add_argument('--out', default='data/shapes', help='output root')
    parser.add_argument('--num-train', type=int, default=800)
    parser.add_argument('--num-val', type=int, default=200)
    parser.add_argument('--num-tune', type=int, default=200)
    parser.add_argument('--img-size', type=int, default=128)
    parser.add_argument(
        '--max-objects', type=int, default=4, help='most objects per image')
    parser.add_argument(
        '--force', action='store_true', help='rewrite existing splits')
    return parser.parse_args(argv)


def describe(coco: dict) -> str:
    """One-line summary of a COCO dict: images, objects, per-class counts.

    Args:
        coco (dict): COCO annotation dict.

    Returns:
        str: The summary.
    """
    num_images = len(coco['images'])
    counts = Counter(ann['category_id'] for ann in coco['annotations'])
    per_class = ', '.join(f'{cat["name"]} {counts[cat["id"]]}'
                          for cat in coco['categories'])
    num_objects = len(coco['annotations'])
    return (f'{num_images} images, {num_objects} objects '
            f'({num_objects / max(num_images, 1):.2f}/image: {per_class})')


def make_split(out: str, split: str, num_images: int, force: bool,
               **kwargs) -> None:
    """Write one split unless an identical one exists, and report it.

    Args:
        out (str): Output root.
        split (str): Split name.
        num_images (int): Number of images.
        force (bool): Rewrite even if the split exists.
        **kwargs: Other arguments of
            :func:`mmddaq.datasets.shapes.generate_shapes`.
    """
    ann_file = shapes_ann_file(out, split)
    if not force and is_generated(out, split, num_images, **kwargs):
        print(f'{split}: up to date, skipped ({ann_file}, {num_images} '
              'images; --force rewrites)')
        return
    start = time.time()
    coco = generate_shapes(out, split, num_images, **kwargs)
    print(f'{split}: wrote {describe(coco)} to {osp.join(out, split)}/ and '
          f'{ann_file} in {time.time() - start:.1f} s')


def main(argv=None):
    args = parse_args(argv)
    if args.preset == 'patches':
        ensure_patches(logger=print)
        return
    if args.preset == 'small':
        for split, num in SMALL_SHAPES_SPLITS.items():
            make_split(SMALL_SHAPES_ROOT, split, num, args.force,
                       **SMALL_SHAPES)
        return
    for split, num in (('train', args.num_train), ('val', args.num_val),
                       ('tune', args.num_tune)):
        make_split(
            args.out,
            split,
            num,
            args.force,
            img_size=args.img_size,
            max_objects=args.max_objects)


if __name__ == '__main__':
    main()
