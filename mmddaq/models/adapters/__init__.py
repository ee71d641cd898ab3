from .classifier import ClassifierAdapter
from .one_stage import OneStageDetectorAdapter
from .two_stage import TwoStageDetectorAdapter

__all__ = [
    'ClassifierAdapter', 'OneStageDetectorAdapter', 'TwoStageDetectorAdapter'
]
