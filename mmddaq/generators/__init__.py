from .generator import Generator
from .sources import (AlgorithmSamples, GaussianSamples, HardestSamples,
                      MixedSamples, RealSamples)

__all__ = [
    'Generator', 'AlgorithmSamples', 'GaussianSamples', 'HardestSamples',
    'MixedSamples',
    'RealSamples'
]
