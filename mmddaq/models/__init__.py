from .adapters import ClassifierAdapter
from .ddaq import DDAQ
from .recorder import OutputRecorder

__all__ = ['ClassifierAdapter', 'DDAQ', 'OutputRecorder']
