from .bit_allocation import (DEFAULT_CANDIDATES, GreedyBitAllocator,
                             LayerCost, average_bits, costs_from_sensitivity,
                             pinned_layers, weight_quant_error,
                             weight_size_bits)
from .fake_quant import (SUPPORTED_BITS, calc_qparams, check_bits,
                         fake_quantize, round_ste)
from .model_quantizer import (ModelQuantizer, activation_quantizers,
                              calibrate_activations, dense_head_levels,
                              freeze_activations,
                              observation_disabled,
                              step_activation_observers,
                              quantizable_layers, quantized_layers)
from .modules import QuantConv2d, QuantLinear
from .adaround import AdaRoundQuantizer
from .observers import EMAMinMaxObserver, MSEObserver, PercentileObserver
from .reconstruction import BlockReconstruction, correct_bias
from .equalization import StreamEqualization, stream_writers
from .output_tuning import OutputTuning
from .quantizers import (ActivationQuantizer, CallSiteQuantizer,
                         WeightQuantizer, quantize_inputs_once,
                         quantize_weights_once)

__all__ = [
    'SUPPORTED_BITS', 'calc_qparams', 'check_bits', 'fake_quantize',
    'round_ste', 'ModelQuantizer', 'activation_quantizers',
    'calibrate_activations', 'freeze_activations', 'observation_disabled',
    'step_activation_observers', 'quantizable_layers',
    'quantized_layers', 'QuantConv2d', 'QuantLinear', 'EMAMinMaxObserver',
    'MSEObserver', 'PercentileObserver', 'AdaRoundQuantizer',
    'BlockReconstruction', 'StreamEqualization', 'stream_writers',
    'OutputTuning', 'correct_bias', 'dense_head_levels',
    'ActivationQuantizer', 'CallSiteQuantizer', 'WeightQuantizer',
    'quantize_inputs_once', 'quantize_weights_once',
    'DEFAULT_CANDIDATES',
    'GreedyBitAllocator', 'LayerCost', 'average_bits',
    'costs_from_sensitivity', 'pinned_layers', 'weight_quant_error',
    'weight_size_bits'
]
