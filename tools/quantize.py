"""Quantize your own OpenMMLab model in one command, without data.

    python tools/quantize.py CONFIG CHECKPOINT [--method ddaq]
        [--w-bits 4 --a-bits 4] [--first-last-bits 8] [--iters N]
        [--batch-size B] [--work-dir DIR] [--export] [--show-data]
        [--cfg-options KEY=VALUE ...] [--launcher pytorch]
    bash tools/dist_quantize.sh CONFIG CHECKPOINT GPUS [options]

CONFIG is the model's own mmpretrain / mmdet config, unchanged; CHECKPOINT
its FP weights. The tool infers the task adapter, the input size (one test
image through the config's own pipeline), the first conv and the output
layers (kept at --first-last-bits) and the generator size; it writes the
complete generated config to WORK_DIR/generated/quantize_config.py (it
inherits CONFIG by path: rerun or edit it with tools/train.py), runs it, evaluates
the FP and the quantized model with the config's test evaluator and writes
WORK_DIR/report.json, report.md, layer_bits.png and samples.png (synthetic
calibration inputs; real test images beside them only with --show-data).
--export adds WORK_DIR/model.onnx and the test metric measured through
onnxruntime, with its default session options and with the recommended
ones. Training reads no data: the test set is used for evaluation only.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmengine.config import DictAction  # noqa: E402

from mmddaq.apis.baselines import DATA_FREE_METHODS  # noqa: E402
from mmddaq.apis.quantize import (QuantizeInputError,  # noqa: E402
                                  check_work_dir_free, plan_quantization,
                                  run_quantization, write_quantize_config)
from mmddaq.utils.dist import (add_launcher_args,  # noqa: E402
                               init_dist_without_gpu, parse_launcher_args)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help="the FP model's own config")
    p.add_argument('checkpoint', help='its FP checkpoint')
    # data-free methods only: the tool never reads training images
    p.add_argument('--method', default='ddaq', choices=DATA_FREE_METHODS)
    p.add_argument('--w-bits', type=int, default=4)
    p.add_argument('--a-bits', type=int, default=4)
    p.add_argument('--first-last-bits', type=int, default=8,
                   help='bits of the first conv and the output layers '
                   '(0: same as the rest)')
    p.add_argument('--iters', type=int, default=400,
                   help='generator iterations')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--num-samples', type=int, default=256,
                   help='generated samples for reconstruction')
    p.add_argument('--reconstruction-iters', type=int, default=200)
    p.add_argument('--input-size', type=int, nargs='+',
                   help='H [W] of the generated images (default: the test '
                   "pipeline's)")
    p.add_argument('--no-bn-loss', action='store_true',
                   help='quantize a model without BatchNorm (no D1)')
    p.add_argument('--work-dir', help='default: work_dirs/quantize/'
                   '<config name>_<method>_w<W>a<A>')
    p.add_argument('--resume', action='store_true',
                   help='continue the run in --work-dir from its last '
                   'checkpoint')
    p.add_argument('--export', action='store_true',
                   help='also export to ONNX and check it in onnxruntime')
    p.add_argument('--show-data', action='store_true',
                   help='put real test images next to the synthetic ones '
                   'in samples.png (off by default: the report may travel '
                   'where the data may not)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='overrides of the user config (e.g. data paths)')
    add_launcher_args(p)
    return parse_launcher_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    name = osp.splitext(osp.basename(args.config))[0]
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'quantize',
        f'{name}_{args.method}_w{args.w_bits}a{args.a_bits}')
    try:
        check_work_dir_free(work_dir, args.resume)
        plan = plan_quantization(
            args.config, args.checkpoint, args.w_bits, args.a_bits,
            args.first_last_bits or None, args.input_size, args.no_bn_loss,
            args.cfg_options)
    except QuantizeInputError as e:
        raise SystemExit(f'tools/quantize.py: {e}')
    init_dist_without_gpu(args.launcher)
    config = write_quantize_config(
        plan, work_dir, args.method, iters=args.iters,
        batch_size=args.batch_size, num_samples=args.num_samples,
        reconstruction_iters=args.reconstruction_iters)
    print(f'[quantize] {plan["task"]} model, input {plan["input_shape"]}, '
          f'first/last layers {plan["first_last_layers"]}; config: {config}',
          flush=True)
    report = run_quantization(plan, config, work_dir, args.method,
                              args.resume, args.export, args.launcher,
                              args.show_data)
    for key, fp in report['fp_metrics'].items():
        print(f'[quantize] {key}: FP {fp:.4f} -> quantized '
              f'{report["quantized_metrics"].get(key, float("nan")):.4f}')
    print(f'[quantize] report: {osp.join(work_dir, "report.md")}')
    return report


if __name__ == '__main__':
    main()
