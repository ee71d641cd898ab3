"""Time a DDAQ config's fake-quantized forward and generator iteration
with PyTorch's fused fake-quantize kernels against mmddaq's CPU kernel
(the same arithmetic from vectorised ops), side by side in one process.

    python tools/fakequant_kernels.py CONFIG [CONFIG ...] [--repeats 10]

Randomly initialised models (speed needs no trained weights); ranges
calibrated on one iteration, then frozen. Prints, per config, the median
milliseconds of each and the fake-quant forward over the FP forward.
"""
import argparse
import os.path as osp
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402

import mmddaq  # noqa: E402,F401
from mmddaq.apis.cost import _build_ddaq, _calibrated  # noqa: E402
from mmddaq.quantization import fake_quant  # noqa: E402

KERNELS = dict(torch=fake_quant.fake_quantize_torch,
               mmddaq=fake_quant.fake_quantize_cpu)


def time_config(path: str, repeats: int) -> dict:
    """Median seconds of each measurement (see module docstring)."""
    cfg = Config.fromfile(path)
    cfg.model.fp_checkpoint = None
    model, optim, plan = _build_ddaq(cfg)
    _calibrated(model, optim, plan)
    x = torch.randn(plan['batch_size'], *model.input_shape)
    generator_plan = dict(plan, update_quantized=False)
    times = {}

    def timed(key, fn):
        start = time.perf_counter()
        fn()
        times.setdefault(key, []).append(time.perf_counter() - start)

    def forward(net):
        model.eval()
        with torch.no_grad():
            model.adapter.forward(net, x)

    def generator_iter():
        model.train()
        model.train_step(generator_plan, optim)

    try:
        for it in range(repeats + 1):  # the first round warms up
            for name, kernel in KERNELS.items():
                fake_quant.FIXED_GRID_KERNELS['cpu'] = kernel
                timed(f'fakequant_forward_{name}',
                      lambda: forward(model.quantized))
                timed(f'generator_iter_{name}', generator_iter)
            timed('fp_forward', lambda: forward(model.fp_model))
            if it == 0:
                times.clear()
    finally:
        fake_quant.FIXED_GRID_KERNELS['cpu'] = KERNELS['mmddaq']
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+')
    p.add_argument('--repeats', type=int, default=10)
    args = p.parse_args(argv)
    for path in args.configs:
        t = time_config(path, args.repeats)
        ratios = ', '.join(
            f'fake-quant/FP forward ({k}) '
            f'{t[f"fakequant_forward_{k}"] / t["fp_forward"]:.2f}'
            for k in KERNELS)
        print(f'{osp.basename(path)}: ' + ', '.join(
            f'{k} {1e3 * v:.1f} ms' for k, v in t.items()) + f'; {ratios}; '
              'generator iteration mmddaq/torch '
              f'{t["generator_iter_mmddaq"] / t["generator_iter_torch"]:.2f}',
              flush=True)


if __name__ == '__main__':
    main()
