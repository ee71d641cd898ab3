from .generator import Generator
from .sources import (AlgorithmSamples, AugmentedSamples, GaussianSamples,
                      HardestSamples, MixedSamples, RealSamples)

__all__ = [
    'Generator', 'AlgorithmSamples', 'AugmentedSamples', 'GaussianSamples',
    'HardestSamples', 'MixedSamples', 'RealSamples'
]
