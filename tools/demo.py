"""The main job on the embedded default: quantize the digits classifier.

    python tools/demo.py [--bits 4] [--iters N]

1. trains the small full-precision ResNet on scikit-learn's digits if it is
   not there yet (once, about a minute on two cores);
2. quantizes it data-free to WxAx with naive PTQ (Gaussian calibration) and
   with DDAQ (generator + two importance-weighted discriminators + KD);
3. evaluates all three on the real held-out digits and prints top-1.
"""
import argparse
import glob
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmddaq.apis import (ensure_fp_checkpoint, load_config,  # noqa: E402
                         test_checkpoint, train_and_test)

FP_CONFIG = 'configs/fp_resnet18-w16_digits.py'
FP_WORK_DIR = 'work_dirs/fp_resnet18-w16_digits'
PTQ_CONFIG = 'configs/baselines/ptq_resnet18-w16_digits_w4a4.py'
DDAQ_CONFIG = 'configs/ddaq_resnet18-w16_digits_w4a4.py'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bits', type=int, default=4,
                        help='bits of weights and activations')
    parser.add_argument('--iters', type=int, default=None,
                        help='DDAQ iterations (default: the config)')
    parser.add_argument('--work-root', default='work_dirs/demo')
    args = parser.parse_args(argv)

    start = time.perf_counter()
    fp_ckpt = ensure_fp_checkpoint(FP_CONFIG, FP_WORK_DIR)
    fp = test_checkpoint(
        load_config(FP_CONFIG), fp_ckpt, osp.join(args.work_root, 'fp'), 'fp')
    opts = {
        'model.fp_checkpoint': fp_ckpt,
        'model.quantizer.w_bits': args.bits,
        'model.quantizer.a_bits': args.bits,
    }
    b = args.bits
    ptq = train_and_test(
        load_config(PTQ_CONFIG, opts),
        osp.join(args.work_root, f'ptq_w{b}a{b}'), 'ptq')
    ddaq_cfg = load_config(DDAQ_CONFIG, opts)
    if args.iters:
        ddaq_cfg.train_cfg.max_iters = args.iters
        ddaq_cfg.train_cfg.val_interval = args.iters
    ddaq_dir = osp.join(args.work_root, f'ddaq_w{b}a{b}')
    ddaq = train_and_test(ddaq_cfg, ddaq_dir, 'ddaq')

    key = 'accuracy/top1'
    print('\nDigits (real held-out split, 540 images), top-1 %:')
    print(f'  {"model":<28}{"top-1":>8}')
    print(f'  {"FP (32-bit float)":<28}{fp[key]:>8.2f}')
    print(f'  {f"naive PTQ W{b}A{b}":<28}{ptq[key]:>8.2f}')
    print(f'  {f"DDAQ W{b}A{b} (data-free)":<28}{ddaq[key]:>8.2f}')
    with open(osp.join(ddaq_dir, 'last_checkpoint')) as f:
        print(f'\nQuantized checkpoint: {f.read().strip()}')
    samples = glob.glob(
        osp.join(ddaq_dir, '*', 'vis_data', 'vis_image', '*.png'))
    if samples:
        print(f'Generated samples:    {max(samples, key=osp.getmtime)}')
    print(f'Took {time.perf_counter() - start:.0f} s.')


if __name__ == '__main__':
    main()
