from .bns_loss import (BNStatisticsLoss, batchnorm_layers, bn_input_moments,
                       bn_statistics_loss)
from .detection_prior import check_topk, dense_class_prior, roi_class_prior
from .discrepancy_loss import DiscrepancyLoss, normalized_mse
from .diversity_loss import pairwise_diversity_loss
from .kd_loss import SoftmaxKDLoss

__all__ = [
    'BNStatisticsLoss', 'batchnorm_layers', 'bn_input_moments',
    'bn_statistics_loss', 'DiscrepancyLoss',
    'normalized_mse', 'SoftmaxKDLoss', 'dense_class_prior',
    'roi_class_prior', 'pairwise_diversity_loss', 'check_topk'
]
