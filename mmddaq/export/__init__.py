"""ONNX export of quantized models (QuantizeLinear/DequantizeLinear)."""
from .convert import (activation_qparams, build_export_network,
                      find_conv_bn_pairs, fold_integer_weight,
                      integer_weight, weight_qparams)
from .int4 import pack_int4
from .networks import (ClassifierNetwork, DenseHeadNetwork, RoIHeadNetwork,
                       TwoStageNetwork, is_two_stage, network_of)
from .onnx_export import (check_output_path, compare_outputs,
                          export_checkpoint, export_network,
                          export_onnx,
                          load_quantized_model, normalize_input_shape,
                          onnxruntime_session, roi_head_path,
                          run_onnxruntime,
                          verify_export)
from .qdq import QDQActivation, QDQCallSites, QDQConv2d, QDQLinear

__all__ = [
    'activation_qparams', 'build_export_network', 'find_conv_bn_pairs',
    'fold_integer_weight', 'integer_weight', 'weight_qparams',
    'ClassifierNetwork', 'DenseHeadNetwork', 'network_of',
    'RoIHeadNetwork', 'TwoStageNetwork', 'is_two_stage', 'roi_head_path',
    'check_output_path', 'compare_outputs', 'export_checkpoint',
    'export_network',
    'export_onnx', 'load_quantized_model', 'normalize_input_shape',
    'onnxruntime_session', 'run_onnxruntime', 'verify_export',
    'QDQActivation', 'QDQCallSites', 'QDQConv2d', 'QDQLinear', 'pack_int4'
]
