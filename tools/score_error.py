"""Per FPN level, how far a quantized one-stage detector's class scores are
from its FP model's: at the anchors where the FP model sees an object
(sigmoid score above a threshold) and over all logits, on real test images.

    python tools/score_error.py CONFIG CHECKPOINT [CONFIG CHECKPOINT ...]
        [--samples 48] [--score-thr 0.05] [--out errors.json]

Each CONFIG/CHECKPOINT pair is a quantized run (a benchmark work dir's
config and its final checkpoint); the images come from the first config's
test loader (measurement only: nothing is fitted to them).
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import mmddaq  # noqa: E402,F401
from mmddaq.export import load_quantized_model  # noqa: E402
from mmddaq.generators.sources import RealSamples  # noqa: E402
from mmddaq.quantization import observation_disabled  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('runs', nargs='+', help='CONFIG CHECKPOINT pairs')
    p.add_argument('--samples', type=int, default=48)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--score-thr', type=float, default=0.05)
    p.add_argument('--out', help='JSON written here')
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        p.error('runs are CONFIG CHECKPOINT pairs')
    return args


@torch.no_grad()
def level_errors(algo, batches, thr):
    """Per level: mean squared sigmoid-score error at FP-confident anchors
    (and their count) and mean squared logit error over all."""
    sums = {}
    with observation_disabled(algo.quantized):
        for x in batches:
            fp = algo.adapter.forward(algo.fp_model, x)['cls_scores']
            q = algo.adapter.forward(algo.quantized, x)['cls_scores']
            for level, (a, b) in enumerate(zip(fp, q)):
                pa, pb = a.sigmoid(), b.sigmoid()
                pos = pa > thr
                s = sums.setdefault(level, [0., 0, 0., 0])
                s[0] += float((pa - pb)[pos].pow(2).sum())
                s[1] += int(pos.sum())
                s[2] += float((a - b).pow(2).sum())
                s[3] += a.numel()
    return [dict(level=k, confident_anchors=v[1],
                 confident_score_mse=v[0] / max(v[1], 1),
                 logit_mse=v[2] / max(v[3], 1))
            for k, v in sorted(sums.items())]


def main(argv=None):
    args = parse_args(argv)
    pairs = list(zip(args.runs[::2], args.runs[1::2]))
    torch.manual_seed(0)
    batches, result = None, []
    for config, checkpoint in pairs:
        algo = load_quantized_model(config, checkpoint)
        if batches is None:
            batches = RealSamples(Config.fromfile(config).test_dataloader)(
                algo, args.samples, args.batch_size)
        levels = level_errors(algo, batches, args.score_thr)
        result.append(dict(config=config, checkpoint=checkpoint,
                           levels=levels))
        print(f'[score_error] {checkpoint}: ' + ' | '.join(
            f'L{r["level"]} confident-score mse '
            f'{r["confident_score_mse"]:.4f} (n={r["confident_anchors"]}) '
            f'logit mse {r["logit_mse"]:.3f}' for r in levels), flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(score_thr=args.score_thr, samples=args.samples,
                           runs=result), f, indent=1)
    return result


if __name__ == '__main__':
    main()
