from .classifier import ClassifierAdapter

__all__ = ['ClassifierAdapter']
