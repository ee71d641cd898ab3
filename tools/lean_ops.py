"""Time mmddaq's lean generator-iteration ops against what they replace.

Side by side in one process, forward and backward, median of repeats, the
two sides of each comparison called in turn every repeat, on the shapes
the default configs run:

- ``UpsampleConv2d`` (one folded stride-2 transposed conv) against
  ``nn.Upsample(scale_factor=2)`` then a 3x3 ``nn.Conv2d``, for each
  upsampling block of a config's generator;
- ``shifted_moments`` (D1's batch mean and variance from two sums) against
  ``torch.var_mean``, for the inputs of the FP model's BN layers;
- the whole iteration of the config's schedule (random weights, ranges
  calibrated then frozen) with both, against the same iteration with both
  replaced by what they replace.

Example::

    python tools/lean_ops.py configs/ddaq_resnet18-w16_digits_w4a4.py \\
        configs/ddaq_retinanet_r18-w16_shapes_w4a4.py --threads 1
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from torch import nn  # noqa: E402

import mmddaq  # noqa: E402,F401  (registers the modules)


def paired_ms(ref, new, repeats: int) -> tuple:
    """Median milliseconds of ``ref`` and ``new``, called in turn every
    repeat (``apis.cost``'s alternating timer)."""
    from mmddaq.apis.cost import _interleaved_medians
    times = _interleaved_medians(dict(ref=ref, new=new), repeats)
    return 1e3 * times['ref'], 1e3 * times['new']


def forward_backward(module_fn, x):
    """A closure running ``module_fn(x)`` and a backward to ``x``."""

    def run():
        x.grad = None
        module_fn(x).square().mean().backward()

    return run


def generator_rows(cfg, repeats: int) -> list:
    """One row per upsampling block of the config's generator."""
    from mmddaq.generators.generator import UpsampleConv2d
    from mmddaq.registry import MODELS
    gen = MODELS.build(cfg.model.generator)
    batch = int(cfg.train_cfg.batch_size)
    side = gen.init_hw
    rows = []
    for m in gen.blocks:
        if not isinstance(m, UpsampleConv2d):
            continue
        x = torch.randn(batch, m.in_channels, *side, requires_grad=True)
        plain = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(m.in_channels, m.out_channels, 3, padding=1))
        plain[1].load_state_dict(m.state_dict())
        rows.append((f'upsample+conv {m.in_channels}->{m.out_channels} '
                     f'at {side[0] * 2} px, batch {batch}',
                     *paired_ms(forward_backward(plain, x),
                                forward_backward(m, x), repeats)))
        side = (side[0] * 2, side[1] * 2)
    return rows


def moments_rows(cfg, repeats: int) -> list:
    """One row per distinct BN input shape of the config's FP model."""
    from mmddaq.losses.bns_loss import batchnorm_layers, shifted_moments
    from mmddaq.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(cfg.model.architecture).eval()
    batch = int(cfg.train_cfg.batch_size)
    shapes, modules = {}, dict(model.named_modules())

    def record(module, inputs, output):
        shapes.setdefault(tuple(inputs[0].shape), module)

    handles = [
        modules[n].register_forward_hook(record)
        for n in batchnorm_layers(model)
    ]
    with torch.no_grad():
        model(torch.randn(batch, *cfg.model.input_shape))
    for h in handles:
        h.remove()
    rows = []
    for shape, bn in shapes.items():
        x = torch.randn(*shape, requires_grad=True)
        dims = [0] + list(range(2, x.dim()))

        def ref(t):
            var, mean = torch.var_mean(t, dim=dims, unbiased=False)
            return var + mean

        def new(t, bn=bn):
            mean_shift, var = shifted_moments(t, bn.running_mean)
            return var + mean_shift

        rows.append((f'BN moments {list(shape)}',
                     *paired_ms(forward_backward(ref, x),
                                forward_backward(new, x), repeats)))
    return rows


class _Reference:
    """Context in which the lean ops compute what they replace."""

    def __enter__(self):
        import torch.nn.functional as F

        from mmddaq.generators.generator import UpsampleConv2d
        from mmddaq.losses import bns_loss

        def upsample_conv(module, x):
            return F.conv2d(F.interpolate(x, scale_factor=2.), module.weight,
                            module.bias, padding=1)

        def var_mean_moments(x, shift):
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            return mean - shift.detach(), var

        self._saved = (UpsampleConv2d.forward, bns_loss.shifted_moments)
        UpsampleConv2d.forward = upsample_conv
        bns_loss.shifted_moments = var_mean_moments
        return self

    def __exit__(self, *exc):
        from mmddaq.generators.generator import UpsampleConv2d
        from mmddaq.losses import bns_loss
        UpsampleConv2d.forward, bns_loss.shifted_moments = self._saved


def iteration_rows(cfg, repeats: int) -> list:
    """The schedule's iteration with the lean ops and with the references.

    Each repeat times one iteration of each, alternating, so that load on
    the machine reaches both alike.
    """
    from mmddaq.apis.cost import _build_ddaq, _calibrated, recipe_plan_mix
    cfg.model.fp_checkpoint = None  # speed does not need trained weights
    model, optim, plan = _build_ddaq(cfg)
    _calibrated(model, optim, plan)
    rows = []
    for (update_g, update_q), share in recipe_plan_mix(cfg.train_cfg).items():
        kind = dict(plan, update_generator=update_g,
                    update_quantized=update_q)

        def ref(kind=kind):
            with _Reference():
                model.train_step(kind, optim)

        rows.append((f'iteration (generator {update_g}, quantized '
                     f'{update_q}; {share:.0%} of the schedule)',
                     *paired_ms(ref, lambda kind=kind: model.train_step(
                         kind, optim), repeats)))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('configs', nargs='+', help='DDAQ configs')
    p.add_argument('--repeats', type=int, default=10)
    p.add_argument('--threads', type=int, default=None,
                   help='torch threads (default: torch decides)')
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print('| config | op | before (ms) | mmddaq (ms) | before / mmddaq |')
    print('|---|---|---|---|---|')
    for path in args.configs:
        cfg = Config.fromfile(path)
        rows = generator_rows(cfg, args.repeats) + moments_rows(
            cfg, args.repeats) + iteration_rows(cfg, args.repeats)
        for op, ref, new in rows:
            print(f'| {path.split("/")[-1]} | {op} | {ref:.1f} | {new:.1f} '
                  f'| {ref / new:.2f} |', flush=True)


if __name__ == '__main__':
    main()
