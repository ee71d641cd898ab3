"""The DDAQ algorithm: FP model, quantized model and generator together."""
import copy
import logging
from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.optim import AmpOptimWrapper, OptimWrapperDict
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.runner import CheckpointLoader
from torch import nn

from mmddaq.generators import Generator, build_input_source
from mmddaq.importance import (layer_of_each_bn, limit_span,
                               normalize_mean_one, tap_weights)
from mmddaq.losses import (BNStatisticsLoss, DiscrepancyLoss,
                           pairwise_diversity_loss)
from mmddaq.quantization import (activation_quantizers, observation_disabled,
                                 quantize_inputs_once, quantize_weights_once,
                                 quantized_layers)
from mmddaq.registry import MODELS
from mmddaq.utils.checkpoint import load_checkpoint_safe, state_dict_mismatch
from mmddaq.utils.nested import detach_nested, flatten_tensors, map_tensors
from mmddaq.utils.recorder import OutputRecorder

DEFAULT_LOSS_WEIGHTS = dict(ce=1.0, bns=0.1, dis=1.0, kd=1.0, q_dis=1.0,
                            div=0.)


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _load_fp_weights(model: nn.Module, checkpoint: str) -> None:
    """Load FP weights; any key or shape mismatch is a clear error."""
    if '://' in checkpoint:  # URLs go through MMEngine's loaders
        ckpt = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    else:
        ckpt = load_checkpoint_safe(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f'{checkpoint} holds no state_dict')
    state = {k[7:] if k.startswith('module.') else k: v
             for k, v in state.items()}
    problems = state_dict_mismatch(model, state)
    if problems:
        raise ValueError(
            f'Checkpoint "{checkpoint}" does not match the model of the '
            f'config ({type(model).__name__}): ' + '; '.join(problems))
    model.load_state_dict(state, strict=True)


def _with_pixel_range(generator: dict, preprocessor: nn.Module) -> dict:
    """``generator`` with ``value_range='pixels'`` replaced by the bounds
    of 0-255 images after ``preprocessor``'s normalisation."""
    if not isinstance(generator, dict) or \
            generator.get('value_range') != 'pixels':
        return generator
    if getattr(preprocessor, '_enable_normalize', False):
        mean, std = preprocessor.mean.flatten(), preprocessor.std.flatten()
    else:  # no normalisation: the pixels themselves
        mean, std = [0.], [1.]
    return dict(generator, value_range=Generator.pixel_range(mean, std))


class _GradientScale(torch.autograd.Function):
    """Identity in the forward pass; the gradient times ``factor``."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def gradient_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged, its gradient multiplied by ``factor``."""
    return _GradientScale.apply(x, factor)


def _check_finite(log_vars: Dict[str, torch.Tensor]) -> None:
    """Raise if a logged loss is NaN or infinite (one device sync)."""
    if not log_vars:
        return
    flat = torch.stack([v.detach().float().reshape(-1).sum()
                        for v in log_vars.values()])
    if bool(torch.isfinite(flat).all()):
        return
    for k, v in log_vars.items():
        if not torch.isfinite(v).all():
            raise FloatingPointError(
                f'{k} became {float(v)} at this iteration: training '
                'diverged. Lower the learning rates or loss weights; the '
                'last checkpoint saved before this point is intact.')


@MODELS.register_module()
class DDAQ(BaseModel):
    """Dual-discriminator adversarial quantization of an OpenMMLab model.

    Holds the frozen full-precision model ``fp_model``, its fake-quantized
    copy ``quantized`` and the ``generator``. One :meth:`train_step` draws
    one batch of synthetic inputs that feeds both updates:

    - generator: ``L_G = ce * CE + bns * L_BNS + div * L_DIV - dis * L_DIS``
      (D1 is the BN-statistics loss, D2 the importance-weighted
      FP/quantized discrepancy; CE only for class-conditional generators:
      a classifier's cross-entropy, a detector's detection prior; L_DIV
      the batch's pairwise diversity of FP tap features, off by default);
    - quantized model: ``L_Q = kd * KD + q_dis * L_DIS``, with the FP
      outputs of the generator step reused, not recomputed.

    A method is this pipeline with other parts: where the inputs come from
    (``sample_source``: the generator, Gaussian noise, a distilled pool,
    real images), how ranges are initialised (observers and calibration
    hooks) and how the quantized model is refined (KD here, block
    reconstruction after training in :class:`PostTrainingHook`). Setting a
    loss weight to 0 removes its term (and its computation): GDFQ-style is
    ``dis=q_dis=0``, the ablation without D1 ``bns=0``; naive PTQ draws
    Gaussian noise (``sample_source='gaussian'``) and only calibrates,
    ZeroQ-style the distilled pool (``'pool'``), QAT real images
    (``sample_source=dict(type='mmddaq.RealSamples', dataloader=...)``).

    Validation and testing run the quantized model (or the FP one with
    ``eval_model='fp'``) exactly as the original model would.

    Args:
        architecture (dict): Config of the full-precision model (an
            mmpretrain classifier or an mmdet detector).
        quantizer (dict): Config of the :class:`ModelQuantizer`.
        adapter (dict): Config of the task adapter.
        generator (dict, optional): Config of the :class:`Generator`;
            ``value_range='pixels'`` bounds its samples to the images the
            data preprocessor can produce (0-255 pixels normalised by its
            mean and std).
        fp_checkpoint (str, optional): Weights of the FP model. Keys must
            match the architecture exactly.
        input_shape (tuple): ``(C, H, W)`` of one model input.
        loss_weights (dict): ``ce``, ``bns``, ``dis``, ``kd``, ``q_dis``,
            ``div``.
        sample_source (str | dict): Where each iteration's inputs come
            from: a sample source config with a ``draw`` method
            (:mod:`mmddaq.generators.sources`) or one of the names
            ``'generator'`` (:class:`GeneratorSamples`), ``'gaussian'``
            (:class:`GaussianSamples`), ``'pool'`` (:class:`PoolSamples`).
            Defaults to ``'generator'``.
        eval_model (str): ``'quantized'`` or ``'fp'``.
        joint_backward (bool): In iterations that update both the
            generator and the quantized model, one backward pass through
            the quantized model serves both updates instead of two: its
            input (and the FP taps of D2) carry the generator's gradient
            reversed and scaled by ``dis / q_dis``. The quantized model's
            gradient is unchanged; the generator then also maximises the
            quantized model's KD loss (weight ``dis * kd / q_dis``), not D2
            alone. Needs ``q_dis > 0`` and plain (not AMP) optimizer
            wrappers; otherwise the two passes are kept. Defaults to False.
        importance_span (float, optional): Largest ratio between two layer
            (D1) or tap (D2) importance weights; wider raw importance is
            clamped around its geometric mean. ``None``: no limit.
            Defaults to 100.
        data_preprocessor (dict, optional): Used as the architecture's data
            preprocessor if that has none (mmpretrain configs keep it at the
            top level). The algorithm uses the built model's preprocessor.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 architecture: dict,
                 quantizer: dict,
                 adapter: dict = dict(type='mmddaq.ClassifierAdapter'),
                 generator: Optional[dict] = None,
                 fp_checkpoint: Optional[str] = None,
                 input_shape=(3, 32, 32),
                 loss_weights: Optional[dict] = None,
                 sample_source: Union[str, dict] = 'generator',
                 eval_model: str = 'quantized',
                 joint_backward: bool = False,
                 importance_span: Optional[float] = 100.,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None) -> None:
        architecture = copy.deepcopy(architecture)
        if data_preprocessor is not None and \
                architecture.get('data_preprocessor') is None:
            architecture['data_preprocessor'] = copy.deepcopy(
                data_preprocessor)
        fp_model = ROOT_MODELS.build(architecture)
        super().__init__(
            data_preprocessor=copy.deepcopy(fp_model.data_preprocessor),
            init_cfg=init_cfg)
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f'unknown loss_weights {sorted(unknown)}; known: '
                             f'{sorted(DEFAULT_LOSS_WEIGHTS)}')
        self.loss_weights = dict(DEFAULT_LOSS_WEIGHTS, **(loss_weights or {}))
        if eval_model not in ('quantized', 'fp'):
            raise ValueError(f'eval_model must be quantized/fp, '
                             f'got "{eval_model}"')
        self.sample_source = copy.deepcopy(sample_source)
        self.input_source = build_input_source(sample_source)
        self.eval_model = eval_model
        self.joint_backward = bool(joint_backward)
        if importance_span is not None and importance_span < 1:
            raise ValueError('importance_span must be >= 1 or None, got '
                             f'{importance_span}')
        self.importance_span = importance_span
        self.input_shape = tuple(input_shape)

        self.fp_model = fp_model
        if fp_checkpoint:
            _load_fp_weights(self.fp_model, fp_checkpoint)
        _freeze(self.fp_model)
        self.fp_model.eval()
        self.quantizer = MODELS.build(quantizer)
        self.quantized = self.quantizer.quantize(self.fp_model)
        for p in self.quantized.parameters():
            p.requires_grad_(True)
        self.adapter = MODELS.build(adapter)

        self.generator = None
        if getattr(self.input_source, 'needs_generator', False):
            if generator is None:
                raise ValueError(
                    f'the sample source {type(self.input_source).__name__} '
                    'needs a generator: give a generator config or another '
                    'sample_source')
            self.generator = MODELS.build(
                _with_pixel_range(generator, self.data_preprocessor))
        labels = getattr(self.generator, 'num_classes', None)
        classes = self.adapter.num_classes(self.fp_model) \
            if hasattr(self.adapter, 'num_classes') else None
        if labels and classes and int(labels) != classes:
            raise ValueError(
                f'the generator draws {labels} classes but the model has '
                f'{classes}: set generator num_classes={classes}')
        self.register_buffer('sample_pool', torch.empty(0))

        self.taps = self.adapter.default_taps(self.fp_model)
        self.bns_loss = BNStatisticsLoss(self.fp_model) \
            if self.loss_weights['bns'] > 0 else None
        self.dis_loss = DiscrepancyLoss(self.taps)
        self._fp_rec = OutputRecorder(self.fp_model, self.taps)
        self._q_rec = OutputRecorder(self.quantized, self.taps)
        self.layer_importance: Dict[str, float] = {}

    # ------------------------------------------------------------------
    # state that is not a tensor: layer importance and the bit-width of
    # every quantized layer travel in checkpoints
    def layer_bits(self) -> Dict[str, List[int]]:
        """``{layer name: [w_bits, a_bits]}`` of the quantized model."""
        return {n: [int(m.w_bits), int(m.a_bits)]
                for n, m in quantized_layers(self.quantized)}

    def get_extra_state(self):
        return dict(layer_importance=dict(self.layer_importance),
                    layer_bits=self.layer_bits())

    def set_extra_state(self, state) -> None:
        if state and state.get('layer_importance'):
            # saved already limited: restored exactly as it was
            self.set_layer_importance(state['layer_importance'],
                                      limit=False)
        saved = (state or {}).get('layer_bits')
        if saved:
            own = self.layer_bits()
            diff = sorted(n for n in set(saved) | set(own)
                          if list(saved.get(n, [])) != own.get(n, []))
            if diff:
                print_log(
                    f'The checkpoint was quantized with other bit-widths '
                    f'than this config for {len(diff)} layers, e.g. '
                    + ', '.join(f'{n}: checkpoint {saved.get(n)} vs config '
                                f'{own.get(n)}' for n in diff[:3])
                    + '. The weights load, but the model is not the one '
                    'that was saved; use the config it was trained with.',
                    logger='current', level=logging.WARNING)

    def set_layer_importance(self, importance: Dict[str, float],
                             limit: bool = True) -> None:
        """Use ``importance`` (layer name -> weight) in D1 and D2.

        The weights are limited to ``importance_span`` and scaled to mean 1.
        Each BN layer inherits the weight of the conv that feeds it, and
        the BN weights are scaled to mean 1 over BN layers (D1 keeps its
        strength whatever the layers without BN weigh); each tap gets the
        mean weight of the layers inside it, likewise limited and scaled.

        Args:
            importance (dict[str, float]): Layer name -> raw weight.
            limit (bool): Limit and rescale ``importance`` first (False for
                weights that already were, e.g. restored from a checkpoint).
        """
        names = {n for n, _ in quantized_layers(self.quantized)}
        unknown = sorted(set(importance) - names)
        if unknown:
            raise ValueError(f'importance names unknown layers {unknown[:5]}')
        self.layer_importance = {k: float(v) for k, v in importance.items()}
        if limit:
            self.layer_importance = limit_span(self.layer_importance,
                                               self.importance_span)
        self.dis_loss.set_tap_weights(
            tap_weights(self.layer_importance, self.taps,
                        self.importance_span))
        if self.bns_loss is not None:
            device = self.device_of()
            x = torch.randn(2, *self.input_shape, device=device)
            mapping = layer_of_each_bn(
                self.fp_model, lambda: self.adapter.forward(self.fp_model, x),
                list(self.layer_importance))
            self.bns_loss.set_layer_weights(
                normalize_mean_one({bn: self.layer_importance[layer]
                                    for bn, layer in mapping.items()}))

    def device_of(self) -> torch.device:
        """The device of the quantized model's parameters."""
        return next(self.quantized.parameters()).device

    def train(self, mode: bool = True):
        """Only the generator trains; both models keep BN statistics frozen.

        Every parameter of the quantized model stays trainable: mmdet's
        ResNet re-freezes its ``frozen_stages`` on each ``train()``, which
        would silently drop the quantized stem and first stage from
        fine-tuning.
        """
        super().train(mode)
        self.fp_model.eval()
        self.quantized.eval()
        for p in self.quantized.parameters():
            p.requires_grad_(True)
        return self

    def calibrating(self) -> bool:
        """bool: Whether activation ranges are still being calibrated."""
        return any(q.enabled and not q.is_frozen()
                   for q in activation_quantizers(self.quantized))

    # ------------------------------------------------------------------
    def sample_inputs(self, batch_size: int):
        """Draw one batch of inputs from the sample source.

        Returns:
            tuple[Tensor, Tensor | None]: Inputs (with gradient to the
            generator when it is used) and generator labels or None.
        """
        return self.input_source.draw(self, batch_size)

    @torch.no_grad()
    def generate(self, batch_size: int) -> torch.Tensor:
        """A batch of the sample source for visualisation (normalised input
        space; with real images as the source, they are taken from its
        stream)."""
        training = self.training
        self.eval()
        try:
            x, _ = self.sample_inputs(batch_size)
        finally:
            self.train(training)
        return x

    def _losses_on(self, x, labels, need_dis_grad: bool, need_q_grad: bool,
                   need_kd: bool = True, calibrating: bool = False,
                   reverse: Optional[float] = None):
        """Forward both models on ``x`` and compute every active loss.

        Only what a backward pass will use is recorded with autograd: D1 and
        CE when ``x`` comes from the generator, the quantized model's graph
        when it is updated or D2 reaches the generator through it. The
        quantized model runs only when something needs it (its update, D2
        for the generator, or range calibration), and D2 is computed once:
        the quantized update's D2 term is the generator's D2, whose gradient
        to the quantized weights is the same as with detached FP features.

        Args:
            x (Tensor): The inputs.
            labels (Tensor, optional): Generator labels (CE).
            need_dis_grad (bool): D2 reaches the generator.
            need_q_grad (bool): The quantized graph is recorded.
            need_kd (bool): The quantized model is updated (KD and its D2
                term are computed). Defaults to True.
            calibrating (bool): Activation ranges are still calibrated
                (the quantized model must run). Defaults to False.
            reverse (float, optional): For one joint backward pass: the
                factor (negative) applied to the gradient that reaches
                ``x`` through the quantized model and the FP taps through
                D2. Defaults to None (gradients unchanged).

        Returns:
            tuple: FP outputs, quantized outputs (None when the quantized
            model did not run) and the losses.
        """
        w = self.loss_weights
        use_d1 = self.bns_loss is not None and x.requires_grad
        with self._fp_rec.recording() as fp_feats, \
                self.bns_loss.recording() if use_d1 else nullcontext():
            fp_out = self.adapter.forward(self.fp_model, x)
        losses = {}
        if use_d1:
            losses['loss_bns'] = self.bns_loss()
        if labels is not None and w['ce'] > 0 and x.requires_grad:
            losses['loss_ce'] = self.adapter.task_loss(fp_out, labels)
        if w['div'] > 0 and x.requires_grad:
            # per-image taps only (a RoI head's outputs are per proposal)
            losses['loss_div'] = pairwise_diversity_loss([
                t for tap in self.taps for t in flatten_tensors(fp_feats[tap])
                if t.shape[0] == x.shape[0]])
        q_out = None
        if need_kd or need_dis_grad or calibrating:
            fp_out_d = detach_nested(fp_out)
            x_q = x
            if reverse is not None:
                x_q = gradient_scaled(x, reverse)
                fp_feats = {
                    tap: map_tensors(v, lambda t: gradient_scaled(t, reverse))
                    for tap, v in fp_feats.items()}
            with torch.set_grad_enabled(need_q_grad), \
                    quantize_weights_once(self.quantized), \
                    quantize_inputs_once(self.quantized), \
                    self._q_rec.recording() as q_feats:
                q_out = self.adapter.forward(self.quantized, x_q,
                                             reference=fp_out_d)
            if need_dis_grad:
                losses['loss_dis'] = self.dis_loss(fp_feats, q_feats)
            if need_kd:
                losses['loss_kd'] = self.adapter.distill_loss(fp_out_d, q_out)
                if w['q_dis'] > 0:
                    losses['loss_q_dis'] = losses['loss_dis'] \
                        if need_dis_grad else self.dis_loss(
                            detach_nested(fp_feats), q_feats)
        return fp_out, q_out, losses

    def train_step(
        self,
        data: Union[dict, list],
        optim_wrapper: OptimWrapperDict,
        before_step: Optional[Callable[[Sequence[nn.Parameter]], None]] = None
    ) -> Dict[str, torch.Tensor]:
        """One DDAQ iteration.

        With data parallelism (:class:`DDAQDataParallel`) each rank draws
        its own batch and D1 (BN statistics) is computed on that local
        batch; gradients are averaged in ``before_step``.

        Args:
            data (dict): A step plan from :class:`DataFreeTrainLoop`
                (``batch_size``, ``update_generator``,
                ``update_quantized``); the inputs come from the sample
                source (real images too, for QAT).
            optim_wrapper (OptimWrapperDict): Wrappers ``generator`` (if a
                generator is used) and ``quantized``.
            before_step (Callable, optional): Called with the parameters
                about to be updated, after every backward pass of the
                iteration and before the optimizer steps (and their
                gradient clipping); data-parallel wrappers average the
                gradients here.

        Returns:
            dict[str, Tensor]: Logged losses.
        """
        w = self.loss_weights
        if not (isinstance(data, dict) and 'batch_size' in data):
            raise TypeError(
                'DDAQ.train_step takes a step plan of DataFreeTrainLoop '
                '(batch_size, update_generator, update_quantized), not a '
                'data batch; for real images use sample_source=dict(type='
                '"mmddaq.RealSamples", dataloader=...)')
        update_g = bool(data.get('update_generator', True)) and \
            self.generator is not None
        update_q = bool(data.get('update_quantized', True))
        # no adversarial D2 while ranges are calibrated: the generator would
        # push activations out of range and the observers would follow
        calibrating = self.calibrating()
        need_dis_grad = update_g and w['dis'] > 0 and not calibrating

        g_params = list(self.generator.parameters()) if update_g else []
        q_params = [p for p in self.quantized.parameters() if p.requires_grad]
        joint = self.joint_backward and need_dis_grad and update_q \
            and w['q_dis'] > 0 and not any(
                isinstance(optim_wrapper[k], AmpOptimWrapper)
                for k in ('generator', 'quantized'))
        reverse = -w['dis'] / w['q_dis'] if joint else None
        # AmpOptimWrapper (``--amp``): every forward pass under autocast
        with optim_wrapper['quantized'].optim_context(self):
            # no generator graph when the generator is not updated
            with torch.set_grad_enabled(update_g):
                x, labels = self.sample_inputs(int(data['batch_size']))
            fp_out, q_out, losses = self._losses_on(
                x, labels, need_dis_grad,
                need_q_grad=update_q or need_dis_grad, need_kd=update_q,
                calibrating=calibrating, reverse=reverse)

        log_vars = {}
        if update_g:
            # the generator's terms that do not pass the quantized model
            loss_g = x.new_zeros(())
            for key, weight in (('loss_ce', w['ce']), ('loss_bns', w['bns']),
                                ('loss_div', w['div'])):
                if key in losses:
                    loss_g = loss_g + weight * losses[key]
            loss_g_own = loss_g
            if need_dis_grad:
                loss_g = loss_g - w['dis'] * losses['loss_dis']
            if not joint:
                ow = optim_wrapper['generator']
                ow.backward(loss_g, inputs=g_params, retain_graph=update_q)
        if update_q:
            loss_q = w['kd'] * losses['loss_kd']
            if 'loss_q_dis' in losses:
                loss_q = loss_q + w['q_dis'] * losses['loss_q_dis']
            if joint:
                # one pass for both: the reversed gradients through the
                # quantized model and D2's FP taps give the generator
                # -dis * D2 - dis * kd / q_dis * KD, the quantized model
                # loss_q
                optim_wrapper['quantized'].backward(
                    loss_q + loss_g_own, inputs=g_params + q_params)
                loss_g = loss_g - w['dis'] * w['kd'] / w['q_dis'] * \
                    losses['loss_kd']
            else:
                optim_wrapper['quantized'].backward(loss_q, inputs=q_params)
            log_vars['loss_q'] = loss_q.detach()
        if update_g:
            log_vars['loss_g'] = loss_g.detach()
        if before_step is not None and (update_g or update_q):
            before_step(g_params + (q_params if update_q else []))
        if update_g:
            optim_wrapper['generator'].step()
            optim_wrapper['generator'].zero_grad()
        if update_q:
            optim_wrapper['quantized'].step()
            optim_wrapper['quantized'].zero_grad()
        log_vars.update({k: v.detach() for k, v in losses.items()})
        if hasattr(self.adapter, 'agreement') and q_out is not None:
            log_vars['agree'] = self.adapter.agreement(
                fp_out.detach(), q_out.detach())
        _check_finite(log_vars)
        return log_vars

    # ------------------------------------------------------------------
    @torch.no_grad()
    def per_sample_discrepancy(self, x: torch.Tensor) -> torch.Tensor:
        """D2 of each sample: the tap-weighted FP-vs-quantized discrepancy.

        Per sample ``sum_t w_t ||fp_t - q_t||^2 / ||fp_t||^2`` over the D2
        taps whose outputs have one row per image (a RoI head's rows are
        proposals and are left out). Activation ranges are not updated.

        Args:
            x (Tensor): ``(N, C, H, W)`` inputs.

        Returns:
            Tensor: ``(N, )`` discrepancies.
        """
        n = x.shape[0]
        with self._fp_rec.recording() as fp_feats:
            fp_out = self.adapter.forward(self.fp_model, x)
        with observation_disabled(self.quantized), \
                quantize_weights_once(self.quantized), \
                self._q_rec.recording() as q_feats:
            self.adapter.forward(self.quantized, x, reference=fp_out)
        score = x.new_zeros(n)
        for tap in self.taps:
            num, den = x.new_zeros(n), x.new_zeros(n)
            for a, b in zip(flatten_tensors(fp_feats[tap]),
                            flatten_tensors(q_feats[tap])):
                if a.dim() == 0 or a.shape[0] != n:
                    continue
                a, b = a.float().reshape(n, -1), b.float().reshape(n, -1)
                num += ((a - b)**2).sum(1)
                den += (a**2).sum(1)
            score += self.dis_loss.tap_weights[tap] * num / (den + 1e-8)
        return score

    def _eval_target(self) -> nn.Module:
        return self.quantized if self.eval_model == 'quantized' \
            else self.fp_model

    def init_weights(self) -> None:
        """Initialise the generator only: both models already hold weights."""
        if self.generator is not None:
            self.generator.init_weights()
        self._is_init = True

    def val_step(self, data) -> list:
        """Evaluate on real data without letting it touch activation ranges."""
        with observation_disabled(self.quantized):
            return self._eval_target().val_step(data)

    def test_step(self, data) -> list:
        with observation_disabled(self.quantized):
            return self._eval_target().test_step(data)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        with observation_disabled(self.quantized):
            return self._eval_target()(inputs, data_samples, mode=mode)


__all__: List[str] = ['DDAQ']
