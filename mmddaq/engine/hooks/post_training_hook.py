"""Post-training quantization steps on a pool of samples, after training."""
import os.path as osp
import time
from typing import List, Optional

import torch
from mmengine.dist import barrier
from mmengine.dist import is_main_process as _is_main
from mmengine.hooks import Hook

from mmddaq.quantization import (activation_quantizers,
                                 calibrate_activations, freeze_activations,
                                 quantized_layers, step_activation_observers)
from mmddaq.quantization.observers import (all_reduce_pending,
                                           broadcast_ranges, build_observer)
from mmddaq.quantization.reconstruction import (ReconstructionState,
                                                correct_bias)
from mmddaq.registry import HOOKS, MODELS, SAMPLE_SOURCES
from .utils import algorithm_of


@HOOKS.register_module()
class PostTrainingHook(Hook):
    """Calibrate, correct biases and reconstruct blocks when training ends.

    The three stages of a data-free method after its sample source:

    1. a pool of ``num_samples`` inputs is drawn from ``samples`` (the
       trained generator by default, or Gaussian noise, or real images);
    2. *initialisation*: ``equalization`` (e.g.
       ``dict(type='mmddaq.StreamEqualization')``) first evens out the
       channel ranges of residual streams in the FP and quantized models
       alike (function-preserving); ``observers`` swaps the range estimators
       (``dict(weight=..., act=...)``, e.g. ``mmddaq.MSEObserver`` for
       both; weight ranges are searched at once, data-free); with
       ``calibrate=True`` the activation ranges are re-estimated on the pool
       by each quantizer's observer and frozen; with
       ``bias_correction=True`` each layer's output mean shift is removed;
    3. *refinement*: ``reconstruction`` (e.g.
       ``dict(type='mmddaq.BlockReconstruction')``) learns rounding and
       activation steps block by block; then ``output_tuning`` (e.g.
       ``dict(type='mmddaq.OutputTuning')``) learns the activation steps of
       the whole model against the task's output error.

    The result is saved as the run's last checkpoint (same file name as the
    final training checkpoint, which it supersedes), so ``tools/test.py``
    evaluates the refined model. While reconstruction runs, its progress is
    kept in ``<work_dir>/reconstruction_state.pth`` (removed once the
    result is saved as a checkpoint; kept when no checkpoint hook saves
    one): a run interrupted there and started again with ``--resume``
    continues after the last finished block.

    Args:
        samples (dict): Sample source config (``mmddaq.AlgorithmSamples``,
            ``mmddaq.GaussianSamples``, ``mmddaq.RealSamples``).
        num_samples (int): Size of the pool. Defaults to 256.
        observers (dict, optional): ``weight`` and/or ``act`` observer
            configs to use from here on. A new ``act`` observer needs
            ``calibrate=True``.
        batch_size (int): Batch size of the pool's forwards.
        calibrate (bool): Re-estimate activation ranges on the pool.
        bias_correction (bool): Correct per-channel output mean shifts.
        reconstruction (dict, optional): Refinement config.
        calibration_samples (dict, optional): A different sample source
            for the activation ranges (e.g. ``mmddaq.GaussianSamples``
            while the generator's samples drive reconstruction); ``None``
            (default): the pool.
        output_tuning (dict, optional): A last refinement on the pool
            against the task adapter's ``distill_loss``
            (``mmddaq.OutputTuning``); ``None`` (default): none.
        equalization (dict, optional): Channel-range equalisation run on
            the pool before calibration (``mmddaq.StreamEqualization``);
            needs ``calibrate=True``. ``None`` (default): none.
        resumable (bool): Keep the reconstruction's progress in the work
            directory so an interrupted run resumes it. Defaults to True.
    """

    #: File name of the reconstruction's progress in the work directory.
    STATE_FILE = 'reconstruction_state.pth'

    priority = 'LOW'

    def __init__(self,
                 samples: dict = dict(type='mmddaq.AlgorithmSamples'),
                 num_samples: int = 256,
                 batch_size: int = 32,
                 observers: Optional[dict] = None,
                 calibrate: bool = True,
                 bias_correction: bool = False,
                 reconstruction: Optional[dict] = None,
                 calibration_samples: Optional[dict] = None,
                 output_tuning: Optional[dict] = None,
                 equalization: Optional[dict] = None,
                 resumable: bool = True) -> None:
        if num_samples < 1 or batch_size < 1:
            raise ValueError('num_samples and batch_size must be >= 1')
        self.observers = dict(observers or {})
        unknown = set(self.observers) - {'weight', 'act'}
        if unknown:
            raise ValueError(f'observers takes "weight" and "act", got '
                             f'{sorted(unknown)}')
        if self.observers.get('act') and not calibrate:
            raise ValueError('a new activation observer needs '
                             'calibrate=True (its ranges start empty)')
        self.samples = SAMPLE_SOURCES.build(samples)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.calibrate = calibrate
        self.bias_correction = bias_correction
        self.reconstruction = MODELS.build(reconstruction) \
            if reconstruction else None
        if calibration_samples is not None and not calibrate:
            raise ValueError('calibration_samples needs calibrate=True')
        self.calibration_samples = SAMPLE_SOURCES.build(
            calibration_samples) if calibration_samples else None
        self.output_tuning = MODELS.build(output_tuning) \
            if output_tuning else None
        if equalization is not None and not calibrate:
            raise ValueError('equalization changes activation ranges; it '
                             'needs calibrate=True')
        self.equalization = MODELS.build(equalization) \
            if equalization else None
        self.resumable = bool(resumable)

    def after_train(self, runner) -> None:
        # Everything runs in eval mode and from the run's seed, not in the
        # mode and random state training and validation happened to leave
        # (a run without validation ended in training mode, with BN on
        # batch statistics): a run resumed after training, or one without
        # a val loop, refines the same model as one that validated last.
        model = algorithm_of(runner)
        training = model.training
        devices = [torch.cuda.current_device()] \
            if torch.cuda.is_available() else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(runner.seed)
                self._post_train(runner)
        finally:
            model.train(training)

    def _post_train(self, runner) -> None:
        start = time.perf_counter()
        model = algorithm_of(runner)
        logger = runner.logger
        batches = self.samples(model, self.num_samples, self.batch_size)
        logger.info(f'Post-training: a pool of {self.num_samples} samples '
                    f'from {type(self.samples).__name__}')
        forward = model.adapter.forward
        fp, q = model.fp_model, model.quantized
        if self.equalization is not None:
            scales = self.equalization(fp, q, forward, batches)
            logger.info('Equalised the channel ranges of stages '
                        f'{sorted(scales)} (scales '
                        + ', '.join(f'{s.min():.2f}-{s.max():.2f}'
                                    for s in scales.values()) + ')')
        if self.observers:
            set_observers(q, **self.observers)
        if self.calibrate:
            source = self.calibration_samples or self.samples
            calib = batches if source is self.samples else source(
                model, self.num_samples, self.batch_size)
            recalibrate(q, forward, calib)
            logger.info('Activation ranges re-estimated on '
                        f'{self.num_samples} samples from '
                        f'{type(source).__name__}')
        if self.bias_correction:
            shifts = correct_bias(fp, q, forward, batches)
            logger.info(f'Bias correction of {len(shifts)} layers')
        state_file = osp.join(runner.work_dir, self.STATE_FILE) \
            if self.resumable and self.reconstruction is not None else None
        if self.reconstruction is not None:
            results = self.reconstruction(
                fp, q, forward, batches,
                score_map=getattr(model.adapter, 'score_map', None),
                output_loss=getattr(model.adapter, 'distill_loss', None),
                state_file=state_file)
            before = sum(r['error_before'] for r in results)
            after = sum(r['error_after'] for r in results)
            logger.info(f'Reconstructed {len(results)} blocks: summed '
                        f'output error {before:.4g} -> {after:.4g}')
            runner.message_hub.update_info('reconstruction', results)
            if _is_main():
                path = osp.join(runner.log_dir, 'reconstruction_error.png')
                plot_reconstruction(results, path)
                logger.info(f'Per-block output error before/after: {path}')
        if self.output_tuning is not None:
            result = self.output_tuning(
                fp, q, forward, batches,
                output_loss=getattr(model.adapter, 'distill_loss', None))
            logger.info(
                f'Output tuning of {result["steps"]} activation steps: '
                f'held-out output loss {result["loss_before"]:.4g} -> '
                f'{result["loss_after"]:.4g}'
                f'{"" if result["kept"] else " (reverted)"}')
            runner.message_hub.update_info('output_tuning', result)
        runner.message_hub.update_info('post_training_seconds',
                                       time.perf_counter() - start)
        saved = self._save(runner)
        if state_file is not None and saved:
            barrier()  # every rank's result is in the checkpoint
            ReconstructionState.remove(state_file)

    @staticmethod
    def _save(runner) -> bool:
        """Save the result as the last checkpoint; whether a checkpoint
        hook did."""
        for hook in runner.hooks:
            if hasattr(hook, '_save_checkpoint_with_step') and \
                    getattr(hook, 'save_last', False):
                hook._save_checkpoint_with_step(
                    runner, runner.iter,
                    meta=dict(epoch=runner.epoch, iter=runner.iter))
                return True
        return False


def plot_reconstruction(results: List[dict], path: str) -> None:
    """Bar chart of each block's output error before and after."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    names = [r['name'] for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names)), 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [r['error_before'] for r in results], 0.4,
           label='before (nearest rounding)')
    ax.bar([x + 0.2 for x in xs], [r['error_after'] for r in results], 0.4,
           label='after reconstruction')
    ax.set_yscale('log')
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=70, ha='right', fontsize=7)
    ax.set_ylabel('block output error (sum of squares / sample)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def set_observers(q_model, weight: Optional[dict] = None,
                  act: Optional[dict] = None) -> None:
    """Swap the range estimators of every quantizer of ``q_model``.

    Weight ranges are searched on the spot; activation quantizers get a
    fresh observer (calibrate them afterwards, see :func:`recalibrate`).
    """
    for _, layer in quantized_layers(q_model):
        if weight:
            layer.weight_quantizer.observer_cfg = dict(weight)
            layer.weight_quantizer.init_from(layer.weight)
        if act:
            for aq in activation_quantizers(layer):
                momentum = getattr(aq.observer, 'momentum', 0.9)
                aq.observer = build_observer(act, momentum).to(
                    aq.observer.min_val.device)


@torch.no_grad()
def recalibrate(q_model, forward, batches) -> None:
    """Estimate every activation range anew on ``batches``, then freeze.

    Each batch is one observer step; data-parallel ranks agree on the
    global batch's range (min-max) and take rank 0's settled range
    (searched observers).
    """
    quantizers = activation_quantizers(q_model)
    for q in quantizers:
        q.observer.reset()
    calibrate_activations(q_model)
    for x in batches:
        forward(q_model, x)
        all_reduce_pending([q.observer for q in quantizers])
        step_activation_observers(q_model)
    freeze_activations(q_model)
    broadcast_ranges([q.observer for q in quantizers])


__all__ = ['PostTrainingHook', 'recalibrate', 'set_observers']
