from .base import (BaseImportance, layer_of_each_bn, limit_span,
                   normalize_mean_one, tap_weights)
from .hessian import HessianImportance
from .output_sensitivity import OutputSensitivityImportance
from .uniform import UniformImportance

__all__ = [
    'BaseImportance', 'layer_of_each_bn', 'limit_span', 'normalize_mean_one',
    'tap_weights',
    'HessianImportance', 'OutputSensitivityImportance', 'UniformImportance'
]
