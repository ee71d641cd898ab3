from .generator import Generator
from .sources import AlgorithmSamples, GaussianSamples, RealSamples

__all__ = ['Generator', 'AlgorithmSamples', 'GaussianSamples', 'RealSamples']
