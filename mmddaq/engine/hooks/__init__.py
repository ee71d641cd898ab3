from .calibration_hook import ActivationCalibrationHook
from .distill_hook import DistilledSamplesHook
from .eval_data_check_hook import EvalDataCheckHook
from .importance_hook import LayerImportanceHook
from .post_training_hook import PostTrainingHook
from .random_state_hook import RandomStateHook
from .safe_checkpoint_hook import SafeCheckpointHook
from .samples_hook import GeneratedSamplesHook

__all__ = [
    'ActivationCalibrationHook', 'DistilledSamplesHook',
    'LayerImportanceHook', 'PostTrainingHook', 'GeneratedSamplesHook', 'RandomStateHook',
    'SafeCheckpointHook', 'EvalDataCheckHook'
]
