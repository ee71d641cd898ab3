from .generator import Generator
from .sources import (SOURCE_NAMES, AlgorithmSamples, AugmentedSamples,
                      GaussianSamples, GeneratorSamples, HardestSamples,
                      MixedSamples, PoolSamples, RealSamples,
                      build_input_source)

__all__ = [
    'Generator', 'AlgorithmSamples', 'AugmentedSamples', 'GaussianSamples',
    'GeneratorSamples', 'HardestSamples', 'MixedSamples', 'PoolSamples',
    'RealSamples', 'SOURCE_NAMES', 'build_input_source'
]
