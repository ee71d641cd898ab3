from mmddaq.utils.recorder import OutputRecorder
from .adapters import (ClassifierAdapter, OneStageDetectorAdapter,
                       TwoStageDetectorAdapter)
from .ddaq import DDAQ
from .wrappers import DDAQDataParallel

__all__ = [
    'ClassifierAdapter', 'OneStageDetectorAdapter', 'TwoStageDetectorAdapter',
    'DDAQ', 'OutputRecorder', 'DDAQDataParallel'
]
