from .generator import Generator
from .sources import (AlgorithmSamples, GaussianSamples, MixedSamples,
                      RealSamples)

__all__ = [
    'Generator', 'AlgorithmSamples', 'GaussianSamples', 'MixedSamples',
    'RealSamples'
]
