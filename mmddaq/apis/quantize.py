"""Quantize a user's own model from its unchanged config and checkpoint.

:func:`plan_quantization` reads the config, checks every input before any
work, and infers what a DDAQ config needs (task adapter, input size,
first/last layers, generator size); :func:`write_quantize_config` writes the
generated config, which inherits the user's config by path and overrides
only what quantization needs, so it can be inspected and rerun with
``tools/train.py``; :func:`run_quantization` runs it and writes the report.
"""
import copy
import json
import math
import os
import os.path as osp
import re
import time
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmddaq.generators.sources import RealSamples
from mmddaq.quantization import check_bits, quantizable_layers
from .baselines import DERIVED_METHODS, derive_method

CONFIG_NAME = 'quantize_config.py'
REPORT_JSON = 'report.json'
#: Final class/box layers of mmdet heads (kept at ``first_last_bits``).
OUTPUT_LAYER = re.compile(r'(^|_)(cls|reg|centerness|objectness)$')
ADAPTERS = dict(classifier='mmddaq.ClassifierAdapter',
                one_stage='mmddaq.OneStageDetectorAdapter',
                two_stage='mmddaq.TwoStageDetectorAdapter')


class QuantizeInputError(ValueError):
    """A user input ``tools/quantize.py`` cannot work with."""


def _load_user_config(config: str, options: Optional[dict]) -> Config:
    if not osp.isfile(config):
        raise QuantizeInputError(f'config file "{config}" does not exist')
    try:
        cfg = Config.fromfile(config)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's
        raise QuantizeInputError(
            f'config "{config}" does not load: {type(e).__name__}: {e}'
        ) from e
    if options:
        cfg.merge_from_dict(options)
    if not isinstance(cfg.get('model'), dict):
        raise QuantizeInputError(f'config "{config}" has no model dict')
    if str(cfg.model.get('type', '')).endswith('DDAQ'):
        raise QuantizeInputError(
            f'"{config}" is already an mmddaq quantization config: run it '
            'with tools/train.py; tools/quantize.py takes the FP model\'s '
            'own config')
    for key in ('test_dataloader', 'test_evaluator'):
        if not cfg.get(key):
            raise QuantizeInputError(
                f'config "{config}" has no {key}: the FP and the quantized '
                'model are evaluated with the config\'s own test set')
    return cfg


def _resolve_checkpoint(checkpoint: str) -> str:
    if '://' in checkpoint:
        cached = osp.join(torch.hub.get_dir(), 'checkpoints',
                          osp.basename(checkpoint.split('?')[0]))
        if osp.isfile(cached):
            return cached
        raise QuantizeInputError(
            f'checkpoint "{checkpoint}" is a URL and is not in the local '
            f'cache ({cached}); this tool does not download: fetch the file '
            'and pass its local path')
    if not osp.isfile(checkpoint):
        raise QuantizeInputError(f'checkpoint "{checkpoint}" does not exist')
    return checkpoint


def task_of(model: nn.Module) -> str:
    """``'classifier'``, ``'one_stage'`` or ``'two_stage'`` for the models
    mmddaq has adapters for.

    Raises:
        QuantizeInputError: For any other model.
    """
    if hasattr(model, 'rpn_head') and hasattr(model, 'roi_head') and \
            hasattr(model, 'extract_feat'):
        return 'two_stage'
    if hasattr(model, 'bbox_head') and hasattr(model, 'extract_feat'):
        return 'one_stage'
    if hasattr(model, 'backbone') and hasattr(model, 'head') and \
            hasattr(model, 'extract_feat'):
        return 'classifier'
    raise QuantizeInputError(
        f'no mmddaq adapter handles {type(model).__name__}: supported are '
        'mmpretrain image classifiers (backbone + head), one-stage mmdet '
        'detectors (bbox_head) and two-stage ones (rpn_head + roi_head)')


def output_layers(model: nn.Module, task: str) -> List[str]:
    """The layers that produce the model's outputs (class scores, boxes).

    Args:
        model (nn.Module): The float model.
        task (str): See :func:`task_of`.

    Returns:
        list[str]: Layer names.
    """
    names = [n for n, _ in quantizable_layers(model)]
    if task == 'classifier':
        return names[-1:]
    heads = ('bbox_head', ) if task == 'one_stage' else ('rpn_head',
                                                         'roi_head')
    found = [n for n in names if n.split('.')[0] in heads
             and OUTPUT_LAYER.search(n.split('.')[-1])]
    return found or names[-1:]


def probe_input(cfg: Config, model: nn.Module) -> torch.Tensor:
    """One test image through the config's own pipeline and preprocessor.

    Raises:
        QuantizeInputError: If the test data cannot be read (names the
            missing path).
    """
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    loader_cfg.pop('sampler', None)
    loader_cfg['sampler'] = dict(type='DefaultSampler', shuffle=False)
    ann = cfg.test_evaluator.get('ann_file') \
        if isinstance(cfg.test_evaluator, dict) else None
    if ann and not osp.exists(ann):
        raise QuantizeInputError(
            f'the test evaluator\'s ann_file "{ann}" does not exist: the '
            'FP and quantized models are evaluated on the config\'s test '
            'set (point test_evaluator.ann_file / test_dataloader at it '
            'with --cfg-options)')
    try:
        return RealSamples(loader_cfg)(model, 1, 1)[0]
    except (FileNotFoundError, OSError, ValueError) as e:
        raise QuantizeInputError(
            f'the test data cannot be read: {e}. The FP and quantized models '
            'are evaluated on the config\'s test set (fix its data_root / '
            'ann_file with --cfg-options)') from e


def generator_for(input_shape: Sequence[int],
                  num_classes: Optional[int]) -> dict:
    """A generator config sized for ``input_shape`` (C, H, W): it starts at
    about 8x8 and upsamples by 2 up to 5 times."""
    c, h, w = input_shape
    ups = max(1, min(5, round(math.log2(max(min(h, w), 8) / 8))))
    while ups > 1 and (h % 2**ups or w % 2**ups):
        ups -= 1
    if h % 2**ups or w % 2**ups:
        raise QuantizeInputError(
            f'input size {h}x{w} is odd; pass --input-size with an even '
            'size (the generator upsamples by 2)')
    return dict(type='mmddaq.Generator', img_size=(h, w), out_channels=c,
                num_classes=num_classes,
                latent_dim=64 if min(h, w) <= 128 else 128,
                base_channels=64 if min(h, w) <= 128 else 128,
                num_upsamples=ups)


def plan_quantization(config: str,
                      checkpoint: str,
                      w_bits: int = 4,
                      a_bits: int = 4,
                      first_last_bits: Optional[int] = 8,
                      input_size: Optional[Sequence[int]] = None,
                      no_bn_loss: bool = False,
                      cfg_options: Optional[dict] = None) -> dict:
    """Check the inputs and infer what the DDAQ config needs.

    Every check runs before any training: a config that does not load, a
    checkpoint that is missing, a URL, or does not match the model, a model
    without an adapter, bits outside 2-8, test data that cannot be read.

    Returns:
        dict: ``config``, ``checkpoint``, ``task``, ``adapter``,
        ``input_shape``, ``first_last_layers``, ``num_classes``,
        ``bits``, ``has_bn``.
    """
    checks = [(w_bits, 'weight bit-width'), (a_bits, 'activation bit-width')]
    if first_last_bits is not None:
        checks.append((first_last_bits, 'first/last layer bit-width'))
    for value, what in checks:
        try:
            check_bits(int(value), what)
        except ValueError as e:
            raise QuantizeInputError(str(e)) from e
    cfg = _load_user_config(config, cfg_options)
    checkpoint = _resolve_checkpoint(checkpoint)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    arch = cfg.model.copy()
    if cfg.get('data_preprocessor') and not arch.get('data_preprocessor'):
        arch['data_preprocessor'] = cfg.data_preprocessor  # mmpretrain
    try:
        model = MODELS.build(arch)
    except Exception as e:  # noqa: BLE001
        raise QuantizeInputError(
            f'the model of "{config}" does not build: {type(e).__name__}: '
            f'{e}') from e
    task = task_of(model)
    if not quantizable_layers(model):
        raise QuantizeInputError(
            f'{type(model).__name__} has no nn.Conv2d or nn.Linear layer to '
            'quantize')
    from mmddaq.models.ddaq import _load_fp_weights
    try:
        _load_fp_weights(model, checkpoint)
    except (ValueError, RuntimeError) as e:
        raise QuantizeInputError(str(e)) from e
    model.eval()
    probe = probe_input(cfg, model)  # also checks the test data is there
    if input_size:
        size = list(input_size) * (2 if len(input_size) == 1 else 1)
        input_shape = (probe.shape[1], int(size[0]), int(size[1]))
    else:
        input_shape = tuple(probe.shape[1:])
    has_bn = any(isinstance(m, _BatchNorm) for m in model.modules())
    if not has_bn and not no_bn_loss:
        raise QuantizeInputError(
            f'{type(model).__name__} has no BatchNorm layer, so the BN '
            'statistics discriminator (D1) has nothing to match; rerun with '
            '--no-bn-loss to quantize without it')
    num_classes = None
    if task == 'classifier':
        num_classes = getattr(model.head, 'num_classes', None)
    return dict(config=osp.abspath(config), checkpoint=osp.abspath(checkpoint),
                task=task, adapter=ADAPTERS[task],
                input_shape=tuple(int(v) for v in input_shape),
                first_last_layers=[n for n, _ in quantizable_layers(model)][:1]
                + output_layers(model, task),
                num_classes=num_classes, bits=(int(w_bits), int(a_bits)),
                first_last_bits=first_last_bits, has_bn=has_bn,
                data_preprocessor=_plain(cfg.get('data_preprocessor')),
                cfg_options=_nest(cfg_options or {}))


def _nest(options: dict) -> dict:
    """``{'a.b': 1}`` as ``{'a': {'b': 1}}`` (merged into the base config
    by MMEngine's inheritance)."""
    nested: dict = {}
    for key, value in options.items():
        node = nested
        *parents, leaf = key.split('.')
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = _plain(value)
    return nested


def _plain(value):
    """ConfigDicts (and lists of them) as plain Python containers."""
    if hasattr(value, 'to_dict'):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def quantization_overrides(plan: dict, iters: int = 400,
                           batch_size: int = 8,
                           num_samples: int = 256,
                           reconstruction_iters: int = 200) -> dict:
    """The config keys quantization needs (the model's architecture comes
    from the user's config)."""
    w_bits, a_bits = plan['bits']
    quantizer = dict(type='mmddaq.ModelQuantizer', w_bits=w_bits,
                     a_bits=a_bits)
    if plan['first_last_bits'] is not None:
        quantizer.update(first_last_bits=int(plan['first_last_bits']),
                         first_last_layers=list(plan['first_last_layers']))
    if plan['task'] != 'classifier':
        quantizer['call_sites'] = 'dense_heads'
    model = dict(
        type='mmddaq.DDAQ', fp_checkpoint=plan['checkpoint'],
        input_shape=tuple(plan['input_shape']), quantizer=quantizer,
        generator=generator_for(plan['input_shape'], plan['num_classes']),
        adapter=dict(type=plan['adapter']),
        loss_weights=dict(ce=1.0 if plan['num_classes'] else 0.,
                          bns=1.0 if plan['has_bn'] else 0., dis=1.0,
                          kd=1.0, q_dis=1.0))
    if plan.get('data_preprocessor'):
        model['data_preprocessor'] = plan['data_preprocessor']
    hessian = dict(type='HessianImportance', batch_size=2, num_batches=2,
                   num_probes=4)
    return dict(
        custom_imports=dict(imports=['mmddaq'], allow_failed_imports=False),
        runner_type='mmddaq.DataFreeRunner',
        model_wrapper_cfg=dict(type='mmddaq.DDAQDataParallel'),
        model=model,
        train_dataloader=None,
        val_dataloader=None, val_cfg=None, val_evaluator=None,
        train_cfg=dict(type='mmddaq.DataFreeTrainLoop', max_iters=iters,
                       batch_size=batch_size, warmup_iters=iters,
                       val_interval=iters),
        optim_wrapper=dict(
            constructor='mmddaq.SubmoduleOptimWrapperConstructor',
            generator=dict(optimizer=dict(type='Adam', lr=1e-3,
                                          betas=(0.5, 0.999))),
            quantized=dict(optimizer=dict(type='Adam', lr=1e-5),
                           clip_grad=dict(max_norm=10, norm_type=2))),
        param_scheduler=None,
        auto_scale_lr=None,
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=0, diff_rank_seed=True),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=20),
            checkpoint=dict(type='mmddaq.SafeCheckpointHook', by_epoch=False,
                            interval=iters, max_keep_ckpts=1,
                            save_last=True),
            random_state=dict(type='mmddaq.RandomStateHook'),
            eval_data=dict(type='mmddaq.EvalDataCheckHook')),
        custom_hooks=[
            dict(type='mmddaq.LayerImportanceHook', method=hessian),
            dict(type='mmddaq.ActivationCalibrationHook',
                 calib_iters=max(1, min(50, iters // 8))),
            dict(type='mmddaq.GeneratedSamplesHook', interval=iters,
                 num_samples=8),
            dict(type='mmddaq.PostTrainingHook',
                 samples=dict(type='mmddaq.AlgorithmSamples'),
                 num_samples=num_samples, batch_size=batch_size,
                 observers=dict(weight=dict(type='mmddaq.MSEObserver')),
                 reconstruction=dict(type='mmddaq.BlockReconstruction',
                                     iters=reconstruction_iters)),
        ])


#: keys whose dict value replaces the user's instead of merging into it
REPLACED = ('model', 'train_cfg', 'optim_wrapper')


def config_text(plan: dict, overrides: dict, method: str) -> str:
    """Text of the generated config (inherits the user's config by path)."""
    lines = [
        f'# Generated by tools/quantize.py ({method}, '
        f'W{plan["bits"][0]}A{plan["bits"][1]}) from',
        f'#   {plan["config"]}',
        f'#   {plan["checkpoint"]}',
        '# Rerun: python tools/train.py THIS_FILE --work-dir DIR',
        f'_base_ = [{plan["config"]!r}]',
    ]
    user = plan.get('cfg_options') or {}
    for key, value in user.items():  # the user's --cfg-options come first
        if key not in overrides:
            lines.append(f'{key} = {value!r}')
    for key, value in overrides.items():
        if key in user and isinstance(value, dict):
            value = _merged(value, user[key])
        if key == 'model':
            body = {k: v for k, v in value.items() if k != 'architecture'}
            lines.append('model = dict(_delete_=True, '
                         'architecture={{_base_.model}}, **' + repr(body) +
                         ')')
        elif key in REPLACED and isinstance(value, dict):
            lines.append(f'{key} = dict(_delete_=True, **{value!r})')
        else:
            lines.append(f'{key} = {value!r}')
    return '\n'.join(lines) + '\n'


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and \
            isinstance(out.get(k), dict) else v
    return out


def derived_overrides(plan: dict, overrides: dict, method: str) -> dict:
    """``overrides`` changed the way ``method`` differs from DDAQ."""
    if method == 'ddaq':
        return overrides
    if method not in DERIVED_METHODS:
        raise QuantizeInputError(
            f'unknown method "{method}"; choose from '
            f'{", ".join(DERIVED_METHODS)}')
    cfg = Config(dict(overrides, model=dict(overrides['model'],
                                            architecture=dict(type='x'))))
    derived = derive_method(cfg, method).to_dict()
    derived['model'].pop('architecture')
    return {k: derived.get(k) for k in overrides}


def write_quantize_config(plan: dict, work_dir: str, method: str = 'ddaq',
                          **schedule) -> str:
    """Write the generated config into ``work_dir``; return its path."""
    overrides = derived_overrides(plan, quantization_overrides(plan,
                                                               **schedule),
                                  method)
    # in a folder of its own: the runner dumps the resolved config to
    # WORK_DIR/<config name>, which must not replace the generated one
    os.makedirs(osp.join(work_dir, 'generated'), exist_ok=True)
    path = osp.join(work_dir, 'generated', CONFIG_NAME)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(config_text(plan, overrides, method))
    return path


def check_work_dir_free(work_dir: str, resume: bool) -> None:
    """Refuse a work dir that holds a finished run (unless resuming)."""
    if osp.isfile(osp.join(work_dir, REPORT_JSON)) and not resume:
        raise QuantizeInputError(
            f'work dir "{work_dir}" already holds a finished quantization '
            f'run ({REPORT_JSON}); choose a new --work-dir, or pass --resume '
            'to run it again from its last checkpoint')


def plot_layers(bits: Dict[str, List[int]], importance: Dict[str, float],
                path: str) -> None:
    """Bits and importance of every quantized layer (one bar each)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = list(bits)
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.18 * len(names)), 6),
                             sharex=True)
    axes[0].bar(range(len(names)), [b[0] for b in bits.values()],
                label='weight', alpha=0.7)
    axes[0].bar(range(len(names)), [b[1] for b in bits.values()],
                label='activation', alpha=0.5)
    axes[0].set_ylabel('bits')
    axes[0].legend()
    values = [importance.get(n, 0.) for n in names]
    axes[1].bar(range(len(names)), values)
    if any(v > 0 for v in values):
        axes[1].set_yscale('log')
        axes[1].set_ylabel('importance')
    else:
        axes[1].set_ylabel('importance (not computed by this method)')
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=90, fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_samples(algorithm, cfg: Config, path: str, show_data: bool = False,
                 num: int = 16) -> None:
    """Picture of the inputs the quantized model was calibrated on.

    The top panel shows ``num`` synthetic inputs (the generator's, or the
    sample source's when there is no generator); real test images are
    shown below them only when ``show_data`` (a report may leave the site
    where the data must stay).

    Args:
        algorithm (DDAQ): The trained algorithm.
        cfg (Config): The run's config (its test dataloader for real
            images).
        path (str): The PNG to write.
        show_data (bool): Add real test images. Defaults to False.
        num (int): Images per panel. Defaults to 16.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from mmddaq.engine.hooks.samples_hook import to_display
    pre = algorithm.data_preprocessor
    mean = getattr(pre, 'mean', torch.zeros(3)).flatten().tolist()
    std = getattr(pre, 'std', torch.ones(3)).flatten().tolist()
    panels = [('synthetic calibration inputs', algorithm.generate(num))]
    if show_data:
        real = RealSamples(cfg.test_dataloader, strict=False)(
            algorithm, num, num)[0]
        panels.append(('real test images (--show-data)', real))
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)),
                             squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], panels):
        if images.shape[1] != 3:
            images = images[:, :1].repeat(1, 3, 1, 1)
        ax.imshow(to_display(images.float(), mean, std))
        ax.set_title(title, fontsize=9)
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_markdown(report: dict) -> str:
    """A human-readable report."""
    lines = [f'# Quantization report: {osp.basename(report["config"])}', '',
             f'- method: `{report["method"]}`, '
             f'W{report["w_bits"]}A{report["a_bits"]}'
             f' (first/last layers: {report["first_last_bits"]} bits)',
             f'- task: {report["task"]}, input {report["input_shape"]}',
             f'- time: {report["seconds"]:.0f} s, peak memory '
             + ('not measured' if report['peak_memory_mb'] is None else
                f'{report["peak_memory_mb"]:.0f} MB'),
             f'- checkpoint: `{report["checkpoint"]}`',
             f'- config (rerun with tools/train.py): '
             f'`{report["quantize_config"]}`', '',
             '| metric | FP | quantized |', '|---|---|---|']
    for key, fp in report['fp_metrics'].items():
        q = report['quantized_metrics'].get(key, float('nan'))
        lines.append(f'| {key} | {fp:.4f} | {q:.4f} |')
    if report.get('export'):
        ex = report['export']
        lines += ['', f'ONNX: `{ex["onnx"]}`; onnxruntime vs PyTorch max '
                  f'|diff| / output range: {ex["default_max_over_range"]:.4f}'
                  f' (default session options), '
                  f'{ex["recommended_max_over_range"]:.4f} (recommended: '
                  'bias kept in float)']
        if ex.get('roi_head_onnx'):
            lines += ['', f'RoI head graph: `{ex["roi_head_onnx"]}`; '
                      'max |diff| / output range: '
                      f'{ex["roi_head_default_max_over_range"]:.4f} '
                      '(default), '
                      f'{ex["roi_head_recommended_max_over_range"]:.4f} '
                      '(recommended); proposals, NMS and RoIAlign run '
                      'between the graphs in mmdet\'s code']
        if 'default_metrics' in ex:
            lines += ['', '| metric | PyTorch fake-quant | onnxruntime '
                      '(default options) | onnxruntime (recommended) |',
                      '|---|---|---|---|']
            for key, value in ex['default_metrics'].items():
                q = report['quantized_metrics'].get(key, float('nan'))
                rec = ex['recommended_metrics'].get(key, float('nan'))
                lines.append(f'| {key} | {q:.4f} | {value:.4f} | '
                             f'{rec:.4f} |')
        else:
            lines.append('Test metric through onnxruntime not measured: '
                         f'{ex["metrics_not_measured"]}.')
    lines += ['', '| layer | w_bits | a_bits | importance |',
              '|---|---|---|---|']
    for name, (w, a) in report['layer_bits'].items():
        imp = report['layer_importance'].get(name)
        lines.append(f'| {name} | {w} | {a} | '
                     f'{"" if imp is None else f"{imp:.3g}"} |')
    return '\n'.join(lines) + '\n'


def run_quantization(plan: dict,
                     config_path: str,
                     work_dir: str,
                     method: str = 'ddaq',
                     resume: bool = False,
                     export: bool = False,
                     launcher: str = 'none',
                     show_data: bool = False) -> dict:
    """Evaluate the FP model, run the generated config, evaluate the
    quantized model, write ``report.json``/``report.md`` and pictures
    (``layer_bits.png``; ``samples.png``, with real test images only when
    ``show_data``).

    Returns:
        dict: The report.
    """
    from .cost import PeakMemory
    from .metrics import run_test
    from .runs import runner_from_cfg
    start = time.perf_counter()
    cfg = Config.fromfile(config_path)
    cfg.work_dir = work_dir
    cfg.launcher = launcher
    fp_cfg = copy.deepcopy(cfg)  # Config.copy() would share the model
    fp_cfg.model.eval_model = 'fp'
    fp_cfg.experiment_name = 'fp_eval'
    with PeakMemory('cuda' if torch.cuda.is_available() else 'cpu') as peak:
        fp_metrics = run_test(runner_from_cfg(fp_cfg))
        cfg.experiment_name = f'{method}_{time.strftime("%Y%m%d_%H%M%S")}'
        cfg.resume = bool(resume)
        runner = runner_from_cfg(cfg)
        runner.train()
        q_metrics = run_test(runner)
    from mmddaq.engine.hooks.utils import algorithm_of
    algo = algorithm_of(runner)
    last = osp.join(work_dir, 'last_checkpoint')
    checkpoint = open(last).read().strip() if osp.isfile(last) else None
    report = dict(
        config=plan['config'], fp_checkpoint=plan['checkpoint'],
        method=method, task=plan['task'], w_bits=plan['bits'][0],
        a_bits=plan['bits'][1], first_last_bits=plan['first_last_bits'],
        input_shape=list(plan['input_shape']),
        fp_metrics={k: float(v) for k, v in fp_metrics.items()},
        quantized_metrics={k: float(v) for k, v in q_metrics.items()},
        layer_bits=algo.layer_bits(),
        layer_importance=dict(algo.layer_importance),
        seconds=time.perf_counter() - start,
        peak_memory_mb=peak.megabytes, checkpoint=checkpoint,
        quantize_config=osp.abspath(config_path))
    if export and checkpoint:
        report['export'] = _export(config_path, checkpoint, work_dir)
    plot_layers(report['layer_bits'], report['layer_importance'],
                osp.join(work_dir, 'layer_bits.png'))
    save_samples(algo, cfg, osp.join(work_dir, 'samples.png'), show_data)
    with open(osp.join(work_dir, REPORT_JSON), 'w') as f:
        json.dump(report, f, indent=1)
    with open(osp.join(work_dir, 'report.md'), 'w') as f:
        f.write(report_markdown(report))
    return report


def _export(config_path: str, checkpoint: str, work_dir: str) -> dict:
    """Export the quantized model, compare onnxruntime's outputs with
    PyTorch's and measure the test metric through onnxruntime, with its
    default session options and with the recommended ones."""
    from mmddaq.export import export_checkpoint, load_quantized_model
    from mmddaq.export.evaluate import evaluate_onnx
    out = osp.join(work_dir, 'model.onnx')
    result = export_checkpoint(config_path, checkpoint, out, overwrite=True)
    report = dict(
        onnx=out,
        default_max_over_range=float(
            result['verification']['max_abs_diff_over_range']),
        recommended_max_over_range=float(
            result['verification_float_bias']['max_abs_diff_over_range']))
    if 'roi_head' in result:  # a two-stage detector's second graph
        roi = result['roi_head']
        report.update(
            roi_head_onnx=roi['path'],
            roi_head_default_max_over_range=float(
                roi['verification']['max_abs_diff_over_range']),
            roi_head_recommended_max_over_range=float(
                roi['verification_float_bias']['max_abs_diff_over_range']))
    model = load_quantized_model(config_path, checkpoint).quantized
    cfg = Config.fromfile(config_path)
    try:
        report['default_metrics'] = evaluate_onnx(cfg, model, out, True)
        report['recommended_metrics'] = evaluate_onnx(cfg, model, out, False)
    except NotImplementedError as e:
        report['metrics_not_measured'] = str(e)
    return report


__all__ = [
    'QuantizeInputError', 'plan_quantization', 'write_quantize_config',
    'run_quantization', 'check_work_dir_free', 'task_of', 'output_layers',
    'generator_for', 'quantization_overrides', 'config_text'
]
