"""Cost of a DDAQ iteration relative to a plain FP training step."""
import statistics
import time
from typing import Tuple

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, OPTIM_WRAPPERS, init_default_scope
from mmengine.optim import build_optim_wrapper


def _median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ddaq_iter_over_fp_step(cfg: Config,
                           repeats: int = 10) -> Tuple[float, float]:
    """Median DDAQ iteration time over median FP training-step time.

    Both use the config's batch size and model; the FP step is forward,
    cross-entropy backward and an SGD step of the float model on a batch
    of the same shape. Activation ranges are frozen first so the DDAQ
    iteration is the steady-state one (generator and quantized updates).

    Args:
        cfg (Config): A DDAQ config.
        repeats (int): Timed repeats of each.

    Returns:
        tuple[float, float]: The ratio and the seconds of one DDAQ iteration.
    """
    from mmddaq.quantization import freeze_activations
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    batch_size = cfg.train_cfg.batch_size
    plan = dict(batch_size=batch_size, update_generator=True,
                update_quantized=True)
    model.train_step(plan, optim)  # calibrate on one batch
    freeze_activations(model.quantized)
    ddaq = _median_seconds(lambda: model.train_step(plan, optim), repeats)

    fp = model.fp_model
    params = list(fp.parameters())
    for p in params:
        p.requires_grad_(True)
    fp.train()
    sgd = OPTIM_WRAPPERS.build(
        dict(type='OptimWrapper',
             optimizer=torch.optim.SGD(params, lr=1e-6, momentum=0.9)))
    x = torch.randn(batch_size, *model.input_shape)
    y = torch.randint(0, 2, (batch_size, ))

    def fp_step():
        out = model.adapter.forward(fp, x)
        sgd.update_params(torch.nn.functional.cross_entropy(out, y))

    fp_time = _median_seconds(fp_step, repeats)
    return ddaq / fp_time, ddaq
