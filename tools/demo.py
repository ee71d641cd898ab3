"""The main job on the embedded default: quantize a detector data-free.

    python tools/demo.py [--task shapes-retinanet|digits] [--bits 4]
                         [--iters N]

1. generates the offline "shapes" detection set and trains the small
   full-precision RetinaNet on it if they are not there yet (once, about
   10 minutes on two cores);
2. quantizes the detector data-free to WxAx with naive PTQ (Gaussian
   calibration) and with DDAQ (generator + two importance-weighted
   discriminators + KD); no training image is read;
3. evaluates all three on the real val split with COCO mAP (CocoMetric).

``--task digits`` runs the same job on the scikit-learn digits classifier
(top-1) in about three minutes.
"""
import argparse
import copy
import glob
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmddaq.apis import (build_runner, ensure_fp_checkpoint,  # noqa: E402
                         load_config, run_test, train_and_test)
from mmddaq.apis.baselines import derive_method  # noqa: E402
from mmddaq.datasets import ensure_shapes  # noqa: E402

TASKS = {
    'shapes-retinanet':
    dict(
        fp_config='configs/fp_retinanet_r18-w16_shapes.py',
        fp_work_dir='work_dirs/fp_retinanet_r18-w16_shapes',
        ddaq_config='configs/ddaq_retinanet_r18-w16_shapes_w4a4.py',
        title='Shapes detection (real val split, 200 images), COCO bbox mAP',
        metrics={'mAP': 'coco/bbox_mAP', 'mAP@0.5': 'coco/bbox_mAP_50'},
        data='shapes'),
    'digits':
    dict(
        fp_config='configs/fp_resnet18-w16_digits.py',
        fp_work_dir='work_dirs/fp_resnet18-w16_digits',
        ddaq_config='configs/ddaq_resnet18-w16_digits_w4a4.py',
        title='Digits (real held-out split, 540 images), top-1 %',
        metrics={'top-1': 'accuracy/top1'}),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', choices=sorted(TASKS),
                        default='shapes-retinanet')
    parser.add_argument('--bits', type=int, default=4,
                        help='bits of weights and activations')
    parser.add_argument('--iters', type=int, default=None,
                        help='DDAQ iterations (default: the config)')
    parser.add_argument('--work-root', default='work_dirs/demo')
    return parser.parse_args(argv)


def print_table(task: dict, results: dict) -> None:
    """Print one row per model and one column per metric."""
    print(f'\n{task["title"]}:')
    names = list(task['metrics'])
    print(f'  {"model":<30}' + ''.join(f'{n:>10}' for n in names))
    for model, metrics in results.items():
        print(f'  {model:<30}' + ''.join(
            f'{metrics[key]:>10.3f}' for key in task['metrics'].values()))


def main(argv=None):
    args = parse_args(argv)
    task = TASKS[args.task]
    b = args.bits
    start = time.perf_counter()
    if task.get('data') == 'shapes':
        ensure_shapes()
    fp_ckpt = ensure_fp_checkpoint(task['fp_config'], task['fp_work_dir'])
    opts = {
        'model.fp_checkpoint': fp_ckpt,
        'model.quantizer.w_bits': b,
        'model.quantizer.a_bits': b,
    }
    ddaq_cfg = load_config(task['ddaq_config'], opts)
    work_root = osp.join(args.work_root, args.task)
    results = {}

    fp_cfg = copy.deepcopy(ddaq_cfg)
    fp_cfg.model.eval_model = 'fp'
    runner = build_runner(fp_cfg, osp.join(work_root, 'fp'), 'fp')
    results['FP (32-bit float)'] = run_test(runner)

    results[f'naive PTQ W{b}A{b}'] = train_and_test(
        derive_method(ddaq_cfg, 'ptq'), osp.join(work_root, f'ptq_w{b}a{b}'),
        'ptq')

    if args.iters:
        ddaq_cfg.train_cfg.max_iters = args.iters
        ddaq_cfg.train_cfg.val_interval = args.iters
    ddaq_dir = osp.join(work_root, f'ddaq_w{b}a{b}')
    results[f'DDAQ W{b}A{b} (data-free)'] = train_and_test(
        ddaq_cfg, ddaq_dir, 'ddaq')

    print_table(task, results)
    with open(osp.join(ddaq_dir, 'last_checkpoint')) as f:
        print(f'\nQuantized checkpoint: {f.read().strip()}')
    samples = glob.glob(
        osp.join(ddaq_dir, '*', 'vis_data', 'vis_image', '*.png'))
    if samples:
        print(f'Generated samples:    {max(samples, key=osp.getmtime)}')
    print(f'Took {time.perf_counter() - start:.0f} s.')


if __name__ == '__main__':
    main()
