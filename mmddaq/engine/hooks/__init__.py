from .calibration_hook import ActivationCalibrationHook
from .distill_hook import DistilledSamplesHook
from .eval_data_check_hook import EvalDataCheckHook
from .importance_hook import LayerImportanceHook
from .random_state_hook import RandomStateHook
from .safe_checkpoint_hook import SafeCheckpointHook
from .samples_hook import GeneratedSamplesHook

__all__ = [
    'ActivationCalibrationHook', 'DistilledSamplesHook',
    'LayerImportanceHook', 'GeneratedSamplesHook', 'RandomStateHook',
    'SafeCheckpointHook', 'EvalDataCheckHook'
]
