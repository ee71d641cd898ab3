from .adapters import (ClassifierAdapter, OneStageDetectorAdapter,
                       TwoStageDetectorAdapter)
from .ddaq import DDAQ
from .recorder import OutputRecorder

__all__ = [
    'ClassifierAdapter', 'OneStageDetectorAdapter', 'TwoStageDetectorAdapter',
    'DDAQ', 'OutputRecorder'
]
