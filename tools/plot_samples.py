"""Put real images next to generated-sample grids, for the docs.

    python tools/plot_samples.py --real data/shapes/val --num-real 16 \
        --generated RUN/vis_data/vis_image/generated_samples_200.png \
        --titles "DDAQ generator" --out samples.png

Real images are shown for reference only: no data-free method reads them.
The generated grids are the PNGs that ``mmddaq.GeneratedSamplesHook``
writes into a run's ``vis_data/vis_image``.
"""
import argparse
import glob
import os.path as osp

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--real', required=True,
                   help='folder of real images (png/jpg)')
    p.add_argument('--num-real', type=int, default=16)
    p.add_argument('--generated', nargs='+', required=True,
                   help='generated-sample grid PNGs')
    p.add_argument('--titles', nargs='+', help='one title per grid')
    p.add_argument('--out', required=True)
    args = p.parse_args(argv)
    if args.titles and len(args.titles) != len(args.generated):
        p.error('give one --titles entry per --generated file')
    return args


def real_grid(folder: str, num: int, cols: int = 8) -> np.ndarray:
    """The first ``num`` images of ``folder`` tiled ``cols`` per row."""
    files = sorted(glob.glob(osp.join(folder, '*.png')) +
                   glob.glob(osp.join(folder, '*.jpg')))[:num]
    if not files:
        raise SystemExit(f'no images in "{folder}"')
    imgs = [np.asarray(Image.open(f).convert('RGB')) for f in files]
    h, w = imgs[0].shape[:2]
    rows = -(-len(imgs) // cols)
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = \
            img[:h, :w]
    return grid


def main(argv=None):
    args = parse_args(argv)
    panels = [(real_grid(args.real, args.num_real),
               'real images (reference only)')]
    titles = args.titles or [osp.basename(g) for g in args.generated]
    for path, title in zip(args.generated, titles):
        if not osp.isfile(path):
            raise SystemExit(f'generated grid "{path}" does not exist')
        panels.append((np.asarray(Image.open(path).convert('RGB')), title))
    fig, axes = plt.subplots(len(panels), 1,
                             figsize=(10, 2.6 * len(panels)))
    for ax, (img, title) in zip(np.atleast_1d(axes), panels):
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
