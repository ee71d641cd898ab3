from .calibration_hook import ActivationCalibrationHook
from .distill_hook import DistilledSamplesHook
from .importance_hook import LayerImportanceHook
from .samples_hook import GeneratedSamplesHook

__all__ = [
    'ActivationCalibrationHook', 'DistilledSamplesHook',
    'LayerImportanceHook', 'GeneratedSamplesHook'
]
