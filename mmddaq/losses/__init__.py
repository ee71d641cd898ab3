from .bns_loss import BNStatisticsLoss, batchnorm_layers
from .discrepancy_loss import DiscrepancyLoss, normalized_mse
from .kd_loss import SoftmaxKDLoss

__all__ = [
    'BNStatisticsLoss', 'batchnorm_layers', 'DiscrepancyLoss',
    'normalized_mse', 'SoftmaxKDLoss'
]
