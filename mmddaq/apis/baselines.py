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
- ``ddaq-no-d1`` / ``ddaq-no-d2`` / ``ddaq-uniform``: DDAQ without the BN
  statistics discriminator, without the discrepancy discriminator, or with
  every layer equally important.
"""
import copy
from typing import List

from mmengine.config import Config

CALIBRATION_METHODS = ('ptq', 'zeroq')
DERIVED_METHODS = ('ddaq', 'ptq', 'zeroq', 'gdfq', 'ddaq-no-d1',
                   'ddaq-no-d2', 'ddaq-uniform')


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
        cfg.model.generator = None
        cfg.model.sample_source = 'gaussian' if method == 'ptq' else 'pool'
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
        cfg.custom_hooks = hooks
    elif method == 'gdfq':
        conditional = (cfg.model.get('generator') or {}).get('num_classes')
        weights.update(ce=1. if conditional else 0., bns=0.1, dis=0.,
                       q_dis=0.)
        _replace_hooks(cfg, ('LayerImportanceHook', ), [])
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
