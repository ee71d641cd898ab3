"""Calibrate activation ranges for a while, then freeze them."""
from mmengine.hooks import Hook

from mmddaq.quantization import (activation_quantizers,
                                 calibrate_activations, freeze_activations,
                                 step_activation_observers)
from mmddaq.quantization.observers import all_reduce_pending
from mmddaq.registry import HOOKS
from .utils import algorithm_of


@HOOKS.register_module()
class ActivationCalibrationHook(Hook):
    """Let activation ranges follow the data for ``calib_iters`` iterations.

    During the window each batch updates the EMA min/max of every
    activation quantizer; afterwards ranges are frozen (and learnable steps
    start from them). The state is part of the model's ``state_dict``, so a
    resumed run continues where it stopped.

    In data-parallel training each iteration's range is that of the global
    batch (minimum and maximum over all ranks' batches, see
    :func:`all_reduce_pending`), so every rank ends with identical ranges.

    Args:
        calib_iters (int): Length of the calibration window in iterations.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, calib_iters: int = 100) -> None:
        if calib_iters < 1:
            raise ValueError(f'calib_iters must be >= 1, got {calib_iters}')
        self.calib_iters = calib_iters

    @staticmethod
    def _quantized(runner):
        model = algorithm_of(runner)
        return model.quantized

    @staticmethod
    def _sync_ranges(quantized) -> None:
        all_reduce_pending(
            [q.observer for q in activation_quantizers(quantized)])

    def before_train(self, runner) -> None:
        if runner.iter < self.calib_iters:
            calibrate_activations(self._quantized(runner))

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if runner.iter < self.calib_iters:
            # one EMA update per iteration, however often a layer ran
            self._sync_ranges(self._quantized(runner))
            step_activation_observers(self._quantized(runner))
        if runner.iter + 1 == self.calib_iters:
            freeze_activations(self._quantized(runner))
            runner.logger.info(
                f'Activation ranges frozen after {self.calib_iters} '
                'calibration iterations.')

    def after_train(self, runner) -> None:
        # a run shorter than the window still ends with frozen ranges
        self._sync_ranges(self._quantized(runner))
        freeze_activations(self._quantized(runner))
