from .hooks import (ActivationCalibrationHook, DistilledSamplesHook,
                    GeneratedSamplesHook, LayerImportanceHook)
from .loops import DataFreeTrainLoop, GeneratedBatches, step_plan
from .optim_constructor import SubmoduleOptimWrapperConstructor
from .runner import DataFreeRunner

__all__ = [
    'ActivationCalibrationHook', 'DistilledSamplesHook',
    'GeneratedSamplesHook', 'LayerImportanceHook', 'DataFreeTrainLoop',
    'GeneratedBatches', 'SubmoduleOptimWrapperConstructor', 'DataFreeRunner',
    'step_plan'
]
