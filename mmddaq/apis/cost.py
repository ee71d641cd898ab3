"""Cost of DDAQ relative to plain full-precision work on the same model.

Ratios of medians of several repeats measured in one process, the two
sides of each ratio alternating so that a change of machine load or clock
during the measurement reaches both alike (memory: one fresh process per
side, so neither sees the other's peak):

- ``iter_over_fp_step``: one DDAQ iteration (generator and quantized
  updates) over one FP training step (forward, backward, SGD step) on a
  batch of the same shape;
- ``recipe_iter_over_fp_step``: the mean iteration of the config's own
  schedule (its ``train_cfg`` decides which iterations update the generator
  and which the quantized model; every default recipe trains the generator
  alone) over the same FP step;
- ``fakequant_over_fp_forward``: forward of the fake-quantized model over
  the FP model's forward (inference, no autograd);
- ``peak_mem_over_fp_step``: the memory a DDAQ iteration needs over what an
  FP training step needs, each measured from before its model is built to
  the peak of its steps (CPU: peak resident set size; CUDA: peak allocated).

The FP step is the model's real training step: its own ``loss`` (mmdet's
detection losses with target assignment, mmpretrain's cross-entropy) on
random targets (labels; three boxes per image), backward and an SGD step.
"""
import copy
import multiprocessing
import os
import statistics
import tempfile
import time
from typing import Callable, Dict

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, OPTIM_WRAPPERS, init_default_scope



def _sync(device) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def _interleaved_medians(fns: Dict[str, Callable],
                         repeats: int,
                         warmup: int = 2,
                         device='cpu') -> Dict[str, float]:
    """Median seconds of each of ``fns``, called in turn every repeat.

    Args:
        fns (dict[str, Callable]): What to time, by name.
        repeats (int): Timed calls of each.
        warmup (int): Untimed calls of each first. Defaults to 2.
        device: Synchronised around each call when CUDA.

    Returns:
        dict[str, float]: Median seconds by name.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, list] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _build_ddaq(cfg: Config, device='cpu'):
    """The config's DDAQ model, its optimisers and a full-update plan."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).to(device)
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    plan = dict(batch_size=cfg.train_cfg.batch_size, update_generator=True,
                update_quantized=True)
    return model, optim, plan


def recipe_plan_mix(train_cfg) -> Dict[tuple, float]:
    """How often each kind of iteration occurs in a schedule.

    Args:
        train_cfg (dict): A ``DataFreeTrainLoop`` config.

    Returns:
        dict: ``(update_generator, update_quantized)`` -> share of the
        ``max_iters`` iterations.
    """
    from mmddaq.engine import step_plan
    counts: Dict[tuple, int] = {}
    n = int(train_cfg['max_iters'])
    for it in range(n):
        plan = step_plan(it, int(train_cfg.get('batch_size', 64)),
                         int(train_cfg.get('warmup_iters', 0)),
                         int(train_cfg.get('generator_interval', 1)),
                         int(train_cfg.get('quantized_interval', 1)))
        key = (plan['update_generator'], plan['update_quantized'])
        counts[key] = counts.get(key, 0) + 1
    return {k: v / n for k, v in counts.items()}


def _calibrated(model, optim, plan) -> None:
    """One iteration on a batch, then frozen ranges: the steady state."""
    from mmddaq.quantization import freeze_activations
    model.train_step(plan, optim)
    freeze_activations(model.quantized)


def random_targets(model, x: torch.Tensor, num_boxes: int = 3,
                   seed: int = 0) -> list:
    """Data samples with random targets for ``model.loss(x, samples)``.

    Args:
        model (nn.Module): An mmdet detector (``extract_feat``) or an
            mmpretrain classifier.
        x (Tensor): The ``(N, C, H, W)`` batch.
        num_boxes (int): Boxes per image of a detector. Defaults to 3.
        seed (int): Seed of the targets. Defaults to 0.

    Returns:
        list: One ``DetDataSample`` (boxes, labels, image meta) or
        ``DataSample`` (label) per image.
    """
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    if hasattr(model, 'bbox_head') or hasattr(model, 'rpn_head'):
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        head = getattr(model, 'roi_head', None)
        head = head.bbox_head if head is not None else model.bbox_head
        num_classes = head.num_classes
        samples = []
        for _ in range(n):
            xy = torch.rand(num_boxes, 2, generator=gen) * torch.tensor(
                [w * 0.7, h * 0.7])
            wh = (0.05 + 0.25 * torch.rand(num_boxes, 2, generator=gen)) * \
                torch.tensor([w, h])
            gt = InstanceData(
                bboxes=torch.cat([xy, xy + wh], 1).to(x.device),
                labels=torch.randint(num_classes, (num_boxes, ),
                                     generator=gen).to(x.device))
            sample = DetDataSample(metainfo=dict(
                img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w),
                batch_input_shape=(h, w), scale_factor=(1., 1.)))
            sample.gt_instances = gt
            samples.append(sample)
        return samples
    from mmpretrain.structures import DataSample
    num_classes = model.head.num_classes
    return [DataSample().set_gt_label(int(c))
            for c in torch.randint(num_classes, (n, ), generator=gen)]


def _fp_step_fn(fp, batch_size: int, input_shape, device='cpu') -> Callable:
    """An FP training step of the FP model ``fp`` (see module docstring).

    Each call makes ``fp`` trainable (parameters with gradients, training
    mode) and puts back the flags and modes it found, so the steps can
    alternate with DDAQ iterations that use ``fp`` as their frozen teacher.
    """
    params = list(fp.parameters())
    sgd = OPTIM_WRAPPERS.build(
        dict(type='OptimWrapper',
             optimizer=torch.optim.SGD(params, lr=1e-6, momentum=0.9)))
    x = torch.randn(batch_size, *input_shape, device=device)
    samples = random_targets(fp, x)

    def fp_step():
        flags = [p.requires_grad for p in params]
        modes = [m.training for m in fp.modules()]
        for p in params:
            p.requires_grad_(True)
        fp.train()
        try:
            loss, _ = fp.parse_losses(fp.loss(x, samples))
            sgd.update_params(loss)
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)
            for m, mode in zip(fp.modules(), modes):
                m.training = mode

    return fp_step


def speed_ratios(cfg: Config,
                 repeats: int = 10,
                 device='cpu') -> Dict[str, float]:
    """Time ratios of DDAQ against the FP model of ``cfg``.

    Args:
        cfg (Config): A DDAQ config.
        repeats (int): Timed repeats of each measurement.
        device (str): Where to run, e.g. ``'cpu'`` or ``'cuda'``.

    Returns:
        dict[str, float]: ``iter_over_fp_step``,
        ``recipe_iter_over_fp_step``, ``fakequant_over_fp_forward`` and the
        median seconds of one DDAQ iteration (``ddaq_iter_s``), the
        schedule's mean iteration (``recipe_iter_s``, each kind of
        iteration timed by its median), FP step (``fp_step_s``),
        fake-quant forward (``fakequant_forward_s``) and FP forward
        (``fp_forward_s``).
    """
    model, optim, plan = _build_ddaq(cfg, device)
    _calibrated(model, optim, plan)
    mix = recipe_plan_mix(cfg.train_cfg)
    full = (plan['update_generator'], plan['update_quantized'])
    # each kind of iteration once: the full one and the schedule's
    steps = {}
    for update_g, update_q in {full, *mix}:
        kind = dict(plan, update_generator=update_g,
                    update_quantized=update_q)
        steps[(update_g, update_q)] = \
            lambda kind=kind: model.train_step(kind, optim)
    # FP training steps alternate with the DDAQ iterations on the same FP
    # model (the DDAQ teacher), whose weights are put back afterwards
    teacher = copy.deepcopy(model.fp_model.state_dict())
    steps['fp_step'] = _fp_step_fn(model.fp_model, plan['batch_size'],
                                   model.input_shape, device)
    times = _interleaved_medians(steps, repeats, device=device)
    model.fp_model.load_state_dict(teacher)
    ddaq, fp_step = times[full], times['fp_step']
    recipe = sum(share * times[kind] for kind, share in mix.items())

    x = torch.randn(plan['batch_size'], *model.input_shape, device=device)
    model.eval()

    def forward(net):
        with torch.no_grad():
            model.adapter.forward(net, x)

    times = _interleaved_medians(
        dict(q=lambda: forward(model.quantized),
             fp=lambda: forward(model.fp_model)), repeats, device=device)
    q_fwd, fp_fwd = times['q'], times['fp']
    return dict(
        iter_over_fp_step=ddaq / fp_step,
        recipe_iter_over_fp_step=recipe / fp_step,
        fakequant_over_fp_forward=q_fwd / fp_fwd,
        ddaq_iter_s=ddaq,
        recipe_iter_s=recipe,
        fp_step_s=fp_step,
        fakequant_forward_s=q_fwd,
        fp_forward_s=fp_fwd)


def _run_side(cfg: Config, side: str, steps: int, device) -> None:
    """``steps`` DDAQ iterations (``side='ddaq'``) or FP training steps."""
    model, optim, plan = _build_ddaq(cfg, device)
    if side == 'ddaq':
        _calibrated(model, optim, plan)
        for _ in range(steps):
            model.train_step(plan, optim)
    else:
        # only the FP model stays alive: drop what DDAQ added
        model.quantized = model.generator = None
        del optim
        step = _fp_step_fn(model.fp_model, plan['batch_size'],
                           model.input_shape, device)
        for _ in range(steps):
            step()


def cuda_peak_memory_ratio(cfg: Config, steps: int = 3) -> Dict[str, float]:
    """Like :func:`peak_memory_ratio`, on the current CUDA device.

    Peak allocated bytes, each side measured from an empty device.
    """
    out = {}
    for side in ('fp', 'ddaq'):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        _run_side(cfg, side, steps, 'cuda')
        torch.cuda.synchronize()
        out[side] = torch.cuda.max_memory_allocated() - start
    return dict(peak_mem_over_fp_step=out['ddaq'] / out['fp'],
                ddaq_peak_mb=out['ddaq'] / 2**20,
                fp_peak_mb=out['fp'] / 2**20)


def _proc_status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f'/proc/self/status has no {field}')


def _reset_peak_rss() -> None:
    """Restart the peak-RSS count (``VmHWM``) from the current RSS.

    ``getrusage``'s ``ru_maxrss`` is no use here: a spawned process's value
    includes its parent's memory at the fork before ``exec``.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass  # older kernels: VmHWM then counts from process start


class PeakMemory:
    """The peak memory of what runs inside it (a context manager).

    On CUDA the allocator's peak of allocated bytes; on CPU the process's
    peak resident set size (``VmHWM``, restarted on entry where the kernel
    allows it). The value is the whole process's peak during the block,
    not only what the block added.

    Args:
        device (str): ``'cuda'`` or ``'cpu'``.

    Example:
        >>> with PeakMemory('cpu') as peak:
        ...     run()
        >>> peak.megabytes
    """

    def __init__(self, device: str = 'cpu') -> None:
        self.cuda = str(device).startswith('cuda')
        self.bytes = None

    def __enter__(self) -> 'PeakMemory':
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            _reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.bytes = torch.cuda.max_memory_allocated()
        else:
            try:
                self.bytes = _proc_status_bytes('VmHWM')
            except (OSError, RuntimeError):  # no /proc: not measured
                self.bytes = None

    @property
    def megabytes(self):
        """The peak in MiB (None where it could not be measured)."""
        return None if self.bytes is None else self.bytes / 2**20


def _peak_memory_child(config_file: str, side: str, steps: int,
                       queue) -> None:
    """Run ``steps`` FP steps or DDAQ iterations; report the peak bytes."""
    import mmddaq  # noqa: F401  (registers the modules)
    try:
        cfg = Config.fromfile(config_file)
        # import every module the build needs first: importing mmdet's or
        # mmpretrain's models costs hundreds of MB that are no step's memory
        init_default_scope(cfg.get('default_scope', 'mmengine'))
        MODELS.get(cfg.model.architecture['type'])
        _reset_peak_rss()
        start = _proc_status_bytes('VmRSS')
        _run_side(cfg, side, steps, 'cpu')
        peak = _proc_status_bytes('VmHWM')
        queue.put((side, peak - start, None))
    except Exception as e:  # report, never hang the parent
        queue.put((side, None, f'{type(e).__name__}: {e}'))


def peak_memory_ratio(cfg: Config, steps: int = 3) -> Dict[str, float]:
    """Peak memory of DDAQ iterations over that of FP training steps (CPU).

    Each side runs in a fresh process, measured from before its model is
    built to the peak resident set size of its steps. The FP side builds
    the same DDAQ model and drops the quantized copy and the generator, so
    the difference is what DDAQ adds.

    Args:
        cfg (Config): A DDAQ config.
        steps (int): Iterations (steps) of each side.

    Returns:
        dict[str, float]: ``peak_mem_over_fp_step``, ``ddaq_peak_mb`` and
        ``fp_peak_mb``.
    """
    ctx = multiprocessing.get_context('spawn')
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        config_file = os.path.join(tmp, 'config.py')
        cfg.dump(config_file)
        for side in ('fp', 'ddaq'):
            queue = ctx.Queue()
            proc = ctx.Process(target=_peak_memory_child,
                               args=(config_file, side, steps, queue))
            proc.start()
            _, peak, error = queue.get()
            proc.join()
            if error:
                raise RuntimeError(f'measuring {side} memory failed: {error}')
            out[side] = peak
    return dict(peak_mem_over_fp_step=out['ddaq'] / out['fp'],
                ddaq_peak_mb=out['ddaq'] / 2**20,
                fp_peak_mb=out['fp'] / 2**20)
