"""Derive the baselines and ablations of any DDAQ config.

The digits testbed ships one config file per method (``configs/baselines``,
``configs/ablations``); for detectors, and for a user's own config, the same
methods are derived from the DDAQ config itself, so every method quantizes
the same model with the same policy and only the data-free recipe differs:

- ``ddaq``: the config unchanged.
- ``ptq``: naive data-free PTQ, activation ranges calibrated on Gaussian
  noise in the normalised input space, weights min-max, no fine-tuning.
- ``zeroq``: PTQ calibrated on a pool of inputs distilled from the FP
  model's BN statistics (ZeroQ-style), no fine-tuning.
- ``gdfq``: GDFQ-style generator trained on BN statistics alone (uniform
  layer weights, GDFQ's weight 0.1, plus CE when the generator is
  conditional), no discrepancy discriminator; KD fine-tuning.
- ``ptq-mse``: ``ptq`` with range search on the Gaussian batches: the
  config's ``ptq_observers`` if it has them, else the observers of its
  ``PostTrainingHook`` (MSE for both roles if none): the strongest cheap
  data-free baseline.
- ``genie``: a generator trained on BN statistics alone (no D2, no
  importance, the quantized model never fine-tuned), then MSE ranges and
  block reconstruction on its samples (Genie-style).
- ``qdrop-real``: MSE range search for weights and activations,
  calibrated on *real* training images (as many as the config's
  post-training pool: 256 on the RetinaNets), then block reconstruction
  (AdaRound, LSQ, QDrop) on the same images; an upper bound, not
  data-free. Its images come from the config's ``real_calib_dataloader``;
  a ``calibration_samples`` source of the config's hook (e.g. Gaussian
  noise for a generator) is not inherited. (Frozen-BN RetinaNet, tune
  split: real-image ranges by MSE 0.115 mAP, by EMA min-max 0.107.)
- ``ddaq-kd``: the paper's recipe: generator with D1, D2 and importance,
  min-max ranges, KD fine-tuning, no post-training refinement; the
  generator is updated every other iteration (``generator_interval=2``
  unless the config sets one), the quantized model every iteration. A
  config's ``kd_loss_weights`` (e.g. another D1 weight chosen for KD
  fine-tuning) override its ``loss_weights`` for this recipe.
- ``ddaq-no-d1`` / ``ddaq-no-d2`` / ``ddaq-uniform``: DDAQ without the BN
  statistics discriminator, without the discrepancy discriminator, or with
  every layer equally important.

A method is a composition of three parts: a sample source (Gaussian noise,
a distilled pool, a generator, real images), an initialisation (ranges from
an observer, optionally bias correction) and a refinement (KD fine-tuning
in the training loop and/or block reconstruction in
:class:`~mmddaq.engine.hooks.PostTrainingHook`).
"""
import copy
from typing import List

from mmengine.config import Config

CALIBRATION_METHODS = ('ptq', 'zeroq', 'ptq-mse', 'qdrop-real')
DERIVED_METHODS = ('ddaq', 'ptq', 'ptq-mse', 'zeroq', 'gdfq', 'genie',
                   'qdrop-real', 'ddaq-kd', 'ddaq-no-d1', 'ddaq-no-d2',
                   'ddaq-uniform')
#: The methods that need no data at all (``qdrop-real`` reads real images
#: from a config's ``real_calib_dataloader``).
DATA_FREE_METHODS = tuple(m for m in DERIVED_METHODS if m != 'qdrop-real')
#: Range search used by the methods that refine after training.
MSE_OBSERVERS = dict(weight=dict(type='mmddaq.MSEObserver'),
                     act=dict(type='mmddaq.MSEObserver'))
POST_TRAINING = 'PostTrainingHook'


def post_training_hook(cfg: Config, samples: dict,
                       reconstruction: bool = True) -> dict:
    """The config's :class:`PostTrainingHook` (or the default one) with
    ``samples``, its range search (MSE for both roles if it has none) and,
    if asked, its refinement (block reconstruction, output tuning)."""
    hook = next((copy.deepcopy(h) for h in cfg.get('custom_hooks') or []
                 if _hook_type(h) == POST_TRAINING),
                dict(type='mmddaq.PostTrainingHook', num_samples=256,
                     reconstruction=dict(type='mmddaq.BlockReconstruction')))
    # assigned, not merged: a config's own source (e.g. MixedSamples with
    # its `sources`) must not leak its arguments into the new one
    hook['samples'] = copy.deepcopy(samples)
    hook['observers'] = copy.deepcopy(hook.get('observers') or MSE_OBSERVERS)
    hook['calibrate'] = True
    if not reconstruction:
        # calibration only: no refinement stage at all
        hook['reconstruction'] = None
        hook['output_tuning'] = None
    elif not hook.get('reconstruction'):
        hook['reconstruction'] = dict(type='mmddaq.BlockReconstruction')
    return hook


def _hook_type(hook: dict) -> str:
    return hook.get('type', '').split('.')[-1]


def _calibration_hook(cfg: Config, calib_iters: int) -> dict:
    for hook in cfg.get('custom_hooks', []) or []:
        if _hook_type(hook) == 'ActivationCalibrationHook':
            hook = copy.deepcopy(hook)
            hook['calib_iters'] = calib_iters
            return hook
    return dict(type='mmddaq.ActivationCalibrationHook',
                calib_iters=calib_iters)


def _calib_iters_of(cfg: Config) -> int:
    for hook in cfg.get('custom_hooks', []) or []:
        if _hook_type(hook) == 'ActivationCalibrationHook':
            return int(hook.get('calib_iters', 50))
    return 50


def _kd_schedule(cfg: Config) -> None:
    """Fine-tune the quantized model with KD after the calibration window
    (a config that trains the generator alone says warmup = max_iters)."""
    tc = cfg.train_cfg
    if tc.get('warmup_iters', 0) >= tc.max_iters:
        tc.warmup_iters = min(_calib_iters_of(cfg), tc.max_iters)


def _replace_hooks(cfg: Config, drop: tuple, add: List[dict]) -> None:
    hooks = [h for h in cfg.get('custom_hooks', []) or []
             if _hook_type(h) not in drop]
    cfg.custom_hooks = add + hooks


def derive_method(cfg: Config,
                  method: str,
                  zeroq_samples: int = 64,
                  zeroq_iters: int = 100) -> Config:
    """Return a copy of the DDAQ config ``cfg`` that runs ``method``.

    Args:
        cfg (Config): A config whose model is ``mmddaq.DDAQ`` trained by
            ``mmddaq.DataFreeTrainLoop``.
        method (str): One of :data:`DERIVED_METHODS`.
        zeroq_samples (int): Size of the ZeroQ distilled pool.
            Defaults to 64.
        zeroq_iters (int): Optimisation steps per pool batch for ZeroQ.
            Defaults to 100.

    Returns:
        Config: The derived config.
    """
    if method not in DERIVED_METHODS:
        raise ValueError(f'unknown method "{method}"; choose from '
                         f'{", ".join(DERIVED_METHODS)}')
    if cfg.model.get('type', '').split('.')[-1] != 'DDAQ':
        raise ValueError('baselines are derived from a DDAQ config (model '
                         f'type mmddaq.DDAQ), got "{cfg.model.get("type")}"')
    cfg = copy.deepcopy(cfg)
    weights = cfg.model.setdefault('loss_weights', {})
    if method == 'ddaq':
        return cfg
    if method in CALIBRATION_METHODS:
        calib_iters = _calib_iters_of(cfg)
        post = None
        if method == 'ptq-mse':
            post = post_training_hook(
                cfg, dict(type='mmddaq.GaussianSamples'),
                reconstruction=False)
            # its pool is the Gaussian calibration set: no second source
            post.pop('calibration_samples', None)
            if cfg.get('ptq_observers'):
                # range search chosen for calibration without refinement
                post['observers'] = copy.deepcopy(cfg.ptq_observers)
            post['num_samples'] = calib_iters * cfg.train_cfg.get(
                'batch_size', 64)
            post['batch_size'] = cfg.train_cfg.get('batch_size', 64)
        elif method == 'qdrop-real':
            if not cfg.get('real_calib_dataloader'):
                raise ValueError(
                    'qdrop-real needs real images: the config has no '
                    '"real_calib_dataloader" (a dataloader of training '
                    'images with the test pipeline)')
            post = post_training_hook(
                cfg, dict(type='mmddaq.RealSamples',
                          dataloader=copy.deepcopy(
                              cfg.real_calib_dataloader)))
            # ranges searched on the real pool too, not taken from the
            # data-free method's calibration source
            post.pop('calibration_samples', None)
            post['observers'] = copy.deepcopy(MSE_OBSERVERS)
        cfg.model.generator = None
        cfg.model.sample_source = 'pool' if method == 'zeroq' \
            else 'gaussian'
        weights.update(ce=0., bns=0., dis=0., q_dis=0.)
        cfg.train_cfg.update(max_iters=calib_iters, warmup_iters=calib_iters,
                             val_interval=calib_iters)
        hooks = [_calibration_hook(cfg, calib_iters)]
        if method == 'zeroq':
            hooks.insert(
                0,
                dict(type='mmddaq.DistilledSamplesHook',
                     num_samples=zeroq_samples, iters=zeroq_iters,
                     batch_size=min(16, zeroq_samples), lr=0.1))
        if post is not None:
            hooks.append(post)
        cfg.custom_hooks = hooks
    elif method in ('gdfq', 'genie'):
        conditional = (cfg.model.get('generator') or {}).get('num_classes')
        weights.update(ce=1. if conditional else 0., bns=0.1, dis=0.,
                       q_dis=0.)
        post = post_training_hook(
            cfg, dict(type='mmddaq.AlgorithmSamples')) \
            if method == 'genie' else None
        _replace_hooks(cfg, ('LayerImportanceHook', POST_TRAINING), [])
        if post is None:
            _kd_schedule(cfg)
        else:
            # the generator alone is trained; reconstruction refines
            cfg.train_cfg.warmup_iters = cfg.train_cfg.max_iters
            cfg.custom_hooks = cfg.custom_hooks + [post]
    elif method == 'ddaq-kd':
        _replace_hooks(cfg, (POST_TRAINING, ), [])
        _kd_schedule(cfg)
        # the generator updated every other iteration, the quantized model
        # every one: level with every iteration on the digits tune split
        # (docs/benchmarks.md, Round 13) at 0.75x the time
        cfg.train_cfg.setdefault('generator_interval', 2)
        weights.update(cfg.get('kd_loss_weights') or {})
    elif method == 'ddaq-no-d1':
        weights.update(bns=0.)
    elif method == 'ddaq-no-d2':
        weights.update(dis=0., q_dis=0.)
    elif method == 'ddaq-uniform':
        _replace_hooks(cfg, ('LayerImportanceHook', ), [
            dict(type='mmddaq.LayerImportanceHook',
                 method=dict(type='UniformImportance'))
        ])
    return cfg
