"""Quantized drop-in replacements of ``nn.Conv2d`` and ``nn.Linear``.

Each wrapper shares the original module's parameters, fake-quantizes its
input activation and its weight, then runs the original operation. They
subclass the modules they replace, so code that checks ``isinstance(m,
nn.Conv2d)`` (weight init, FLOP counters, ...) keeps working.
"""
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from mmddaq.registry import MODELS


def _build(cfg, default_type):
    cfg = dict(cfg or {})
    cfg.setdefault('type', default_type)
    return MODELS.build(cfg)


class _QuantMixin:
    """Shared set-up of the two wrappers."""

    def _init_quantizers(self, w_cfg: Optional[dict],
                         a_cfg: Optional[dict]) -> None:
        self.weight_quantizer = _build(w_cfg, 'mmddaq.WeightQuantizer')
        self.act_quantizer = _build(a_cfg, 'mmddaq.ActivationQuantizer')
        self.weight_quantizer.init_from(self.weight)

    @property
    def w_bits(self) -> int:
        """int: Bit-width of the weight."""
        return self.weight_quantizer.bits

    @property
    def a_bits(self) -> int:
        """int: Bit-width of the input activation."""
        return self.act_quantizer.bits

    def quantized_weight(self) -> torch.Tensor:
        """Tensor: The fake-quantized weight."""
        return self.weight_quantizer(self.weight)


@MODELS.register_module()
class QuantConv2d(_QuantMixin, nn.Conv2d):
    """Fake-quantized ``nn.Conv2d``.

    Args:
        conv (nn.Conv2d): The module to wrap; its parameters are shared.
        weight_quantizer (dict, optional): Config of the weight quantizer.
        act_quantizer (dict, optional): Config of the input-activation
            quantizer.
    """

    def __init__(self,
                 conv: nn.Conv2d,
                 weight_quantizer: Optional[dict] = None,
                 act_quantizer: Optional[dict] = None) -> None:
        nn.Module.__init__(self)
        for attr in ('in_channels', 'out_channels', 'kernel_size', 'stride',
                     'padding', 'dilation', 'transposed', 'output_padding',
                     'groups', 'padding_mode'):
            setattr(self, attr, getattr(conv, attr))
        self._reversed_padding_repeated_twice = \
            conv._reversed_padding_repeated_twice
        self.weight = conv.weight
        self.bias = conv.bias
        self._init_quantizers(weight_quantizer, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_quantizer(x)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


@MODELS.register_module()
class QuantLinear(_QuantMixin, nn.Linear):
    """Fake-quantized ``nn.Linear``.

    Args:
        linear (nn.Linear): The module to wrap; its parameters are shared.
        weight_quantizer (dict, optional): Config of the weight quantizer.
        act_quantizer (dict, optional): Config of the input-activation
            quantizer.
    """

    def __init__(self,
                 linear: nn.Linear,
                 weight_quantizer: Optional[dict] = None,
                 act_quantizer: Optional[dict] = None) -> None:
        nn.Module.__init__(self)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self._init_quantizers(weight_quantizer, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)


#: Float module type -> its quantized wrapper.
QUANT_MODULE_MAP = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}
QUANT_MODULES = (QuantConv2d, QuantLinear)
