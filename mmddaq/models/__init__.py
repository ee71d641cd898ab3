from .adapters import (ClassifierAdapter, OneStageDetectorAdapter,
                       TwoStageDetectorAdapter)
from .ddaq import DDAQ
from .recorder import OutputRecorder
from .wrappers import DDAQDataParallel

__all__ = [
    'ClassifierAdapter', 'OneStageDetectorAdapter', 'TwoStageDetectorAdapter',
    'DDAQ', 'OutputRecorder', 'DDAQDataParallel'
]
