"""How much of each input a detector sees as objects: the share of anchor
positions where the FP model scores some class above 0.05, on generated,
Gaussian and real images.

    python tools/detection_prior.py CONFIG CHECKPOINT --out prior.json
        [--samples 64] [--cfg-options KEY=VALUE ...]

CONFIG/CHECKPOINT: a trained one-stage DDAQ run (its generator is sampled);
the real images come from the config's test loader (measurement only).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

import mmddaq  # noqa: E402,F401
from mmddaq.export import load_quantized_model  # noqa: E402
from mmddaq.generators.sources import (AlgorithmSamples,  # noqa: E402
                                       GaussianSamples, RealSamples)
from mmddaq.models.adapters.detector_base import \
    confident_anchor_share  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--samples', type=int, default=64)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--score-thr', type=float, default=0.05)
    p.add_argument('--out', help='JSON written here')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


@torch.no_grad()
def share(algo, batches, thr):
    fp = algo.fp_model
    values, counts = [], []
    for x in batches:
        out = algo.adapter.forward(fp, x)
        values.append(confident_anchor_share(out['cls_scores'], thr))
        counts.append(len(x))
    return sum(v * c for v, c in zip(values, counts)) / sum(counts)


def main(argv=None):
    args = parse_args(argv)
    algo = load_quantized_model(args.config, args.checkpoint,
                                args.cfg_options)
    torch.manual_seed(0)
    bs, n = args.batch_size, args.samples
    generated = []
    if algo.generator is not None:
        algo.generator.train()  # batch statistics, as it was trained
        generated = AlgorithmSamples()(algo, n, bs)
    gaussian = GaussianSamples()(algo, n, bs)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    real = RealSamples(cfg.test_dataloader)(algo, n, bs)
    result = dict(score_thr=args.score_thr, samples=n,
                  real=share(algo, real, args.score_thr),
                  gaussian=share(algo, gaussian, args.score_thr))
    if generated:
        result['generated'] = share(algo, generated, args.score_thr)
    print('[detection_prior] share of anchors with an FP score > '
          f'{args.score_thr}: ' + ', '.join(
              f'{k} {v:.4f}' for k, v in result.items()
              if k in ('real', 'gaussian', 'generated')), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
