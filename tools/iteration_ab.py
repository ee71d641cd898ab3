"""Time a both-updates DDAQ iteration with the current CPU fake-quantize
mask and D1 moments against their earlier forms, side by side.

The earlier forms, kept here as references: a boolean straight-through
mask (``ge``, ``le``, ``and``; a promoting product in the backward) and
D1's per-channel moments differentiated by autograd from the formulas.
Both sides run the same model (random weights, ranges calibrated then
frozen), called in turn every repeat with an FP training step between
(``apis.cost``'s alternating timer); each row is the median iteration over
the median FP step. Rows are appended to ``--out`` (suite ``speed``,
methods ``<method>-ab`` and ``<method>-ab-earlier-ops``).

Example::

    python tools/iteration_ab.py --models digits shapes-retinanet \\
        --method ddaq-kd --repeats 15 --out docs/benchmarks/speed_ab_r25.json
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

import torch  # noqa: E402

import mmddaq  # noqa: E402,F401  (registers the modules)


class _BoolMaskFakeQuantize(torch.autograd.Function):
    """The earlier CPU kernel: a boolean mask from three comparisons."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        from mmddaq.quantization.fake_quant import _one_grid_levels
        if scale.numel() == 1:
            levels, step, lo, hi = _one_grid_levels(x, scale, zero_point,
                                                    qmin, qmax)
            if ctx.needs_input_grad[0]:
                ctx.save_for_backward((levels >= lo) & (levels <= hi))
            return levels.clamp_(lo, hi).mul_(step)
        levels = torch.round(x * torch.reciprocal(scale)).add_(zero_point)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward((levels >= qmin) & (levels <= qmax))
        return levels.clamp_(qmin, qmax).sub_(zero_point).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return grad * inside, None, None, None, None


def bool_mask_kernel(x, scale, zero_point, qmin, qmax):
    """``fake_quantize_cpu`` with the boolean-mask autograd function."""
    from mmddaq.quantization.fake_quant import fake_quantize_cpu
    if scale.numel() == 1 and not (x.requires_grad
                                   and torch.is_grad_enabled()):
        return fake_quantize_cpu(x, scale, zero_point, qmin, qmax)
    return _BoolMaskFakeQuantize.apply(x, scale.float(),
                                       zero_point.round().float(), qmin, qmax)


def autograd_moments(x, shift):
    """D1's moments with the gradient autograd derives from the sums."""
    dims = [0] + list(range(2, x.dim()))
    dtype = torch.promote_types(x.dtype, torch.float32)
    y = x.to(dtype) - shift.detach().to(dtype).view(
        1, -1, *([1] * (x.dim() - 2)))
    n = x.numel() // x.shape[1]
    mean_shift = y.sum(dims) / n
    return mean_shift, (y * y).sum(dims) / n - mean_shift * mean_shift


def ab_ratios(cfg, repeats: int) -> dict:
    """``{'current': ratio, 'earlier': ratio}`` of one both-updates
    iteration over one FP training step."""
    from mmddaq.apis.cost import (_build_ddaq, _calibrated, _fp_step_fn,
                                  _interleaved_medians)
    from mmddaq.losses import bns_loss
    from mmddaq.quantization import fake_quant
    model, optim, plan = _build_ddaq(cfg)
    _calibrated(model, optim, plan)
    ops = dict(current=(fake_quant.FIXED_GRID_KERNELS['cpu'],
                        bns_loss.shifted_moments),
               earlier=(bool_mask_kernel, autograd_moments))

    def iteration(side):
        kernel, moments = ops[side]
        fake_quant.FIXED_GRID_KERNELS['cpu'] = kernel
        bns_loss.shifted_moments = moments
        model.train_step(plan, optim)

    fns = {side: (lambda side=side: iteration(side)) for side in ops}
    fns['fp_step'] = _fp_step_fn(model.fp_model, plan['batch_size'],
                                 model.input_shape)
    try:
        times = _interleaved_medians(fns, repeats)
    finally:
        fake_quant.FIXED_GRID_KERNELS['cpu'], bns_loss.shifted_moments = \
            ops['current']
    return {side: times[side] / times['fp_step'] for side in ops}


def main():
    from benchmark import SUITES, _load_rows, _save_rows, method_config
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--models', nargs='+', choices=sorted(SUITES),
                   default=['digits', 'shapes-retinanet'])
    p.add_argument('--method', default='ddaq-kd')
    p.add_argument('--repeats', type=int, default=15)
    p.add_argument('--out', required=True)
    args = p.parse_args()
    rows = _load_rows(args.out)
    for name in args.models:
        suite = SUITES[name]
        cfg = method_config(suite, args.method, {'model.fp_checkpoint': None})
        ratios = ab_ratios(cfg, args.repeats)
        for side, tag in (('current', '-ab'), ('earlier', '-ab-earlier-ops')):
            rows.append(dict(suite='speed', model=suite['model'],
                             method=args.method + tag, w_bits=4, a_bits=4,
                             seed=0, metric='iter_over_fp_step',
                             value=round(ratios[side], 4),
                             repeats=args.repeats, device='cpu'))
        print(f'[iteration_ab] {suite["model"]} {args.method}: current '
              f'{ratios["current"]:.3f}, earlier ops '
              f'{ratios["earlier"]:.3f} FP steps', flush=True)
        _save_rows(args.out, rows)


if __name__ == '__main__':
    main()
