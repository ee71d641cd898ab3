"""Export mmddaq quantized models to ONNX with QDQ nodes.

What the graph holds (see :mod:`mmddaq.export.qdq` and
:mod:`mmddaq.export.convert` for the details):

- every quantized conv/linear input: ``QuantizeLinear -> DequantizeLinear``
  per tensor (uint8 for the default asymmetric activation grid, int8 for a
  symmetric one), scale and zero point from the trained activation
  quantizer; grids below 8 bits add a ``Clip`` to the grid's end points in
  front of ``QuantizeLinear``;
- every quantized weight: an int8 initializer holding the trained integer
  levels (centred into int8) read by ``DequantizeLinear`` per output
  channel (``axis=0``);
- BatchNorm folded into the preceding conv after weight quantization (the
  way mmddaq trains and evaluates), so no ``BatchNormalization`` node
  remains where a conv feeds a BatchNorm;
- biases, residual additions, pooling and everything outside conv/linear
  layers in float32, as in the fake-quantized PyTorch model.

The exporter is PyTorch's TorchScript-based one (``dynamo=False``), with
opset 13 (the first with per-channel ``DequantizeLinear``) by default;
``int4=True`` rewrites 4-bit grids with opset 21's int4/uint4 types
(:mod:`mmddaq.export.int4`).
"""
import os
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from torch import nn

from mmddaq.quantization import observation_disabled, quantized_layers
from mmddaq.registry import MODELS
from mmddaq.utils.checkpoint import load_checkpoint_safe
from .convert import build_export_network
from .int4 import pack_int4
from .networks import RoIHeadNetwork, is_two_stage, network_of

#: Smallest opset with per-channel (``axis``) DequantizeLinear.
MIN_OPSET = 13
#: Newest opset of PyTorch's TorchScript exporter.
MAX_OPSET = 20
DEFAULT_OPSET = 13


def normalize_input_shape(shape: Sequence[int]) -> tuple:
    """``(N, C, H, W)`` from ``(C, H, W)`` (batch 1) or ``(N, C, H, W)``.

    Args:
        shape (Sequence[int]): The shape.

    Returns:
        tuple[int, int, int, int]: The 4-D input shape.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        shape = (1, ) + shape
    if len(shape) != 4 or min(shape) <= 0:
        raise ValueError(
            f'input shape must be C H W or N C H W with positive sizes, '
            f'got {shape}')
    return shape


def check_output_path(out: str, overwrite: bool = False) -> str:
    """Refuse an output path that exists (unless ``overwrite``).

    Args:
        out (str): The ``.onnx`` path to write.
        overwrite (bool): Allow replacing an existing file.

    Returns:
        str: ``out`` unchanged.
    """
    if osp.isdir(out):
        raise IsADirectoryError(f'output path "{out}" is a directory')
    if osp.exists(out) and not overwrite:
        raise FileExistsError(
            f'output file "{out}" already exists; pass --overwrite '
            '(overwrite=True) to replace it')
    if not out.endswith('.onnx'):
        raise ValueError(f'output file "{out}" must end with .onnx')
    return out


def _torch_onnx_export(network: nn.Module,
                       inputs: torch.Tensor,
                       path: str,
                       output_names: List[str],
                       opset: int,
                       int4: bool = False,
                       output_ranks: Sequence[int] = ()) -> None:
    # batch, height and width are free: test images of any size run
    dynamic_axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    ranks = list(output_ranks) or [2] * len(output_names)
    for name, rank in zip(output_names, ranks):
        dynamic_axes[name] = {0: 'batch'} if rank < 4 else {
            0: 'batch', 2: f'{name}_height', 3: f'{name}_width'}
    with warnings.catch_warnings():
        # the TorchScript exporter announces its own deprecation
        warnings.simplefilter('ignore')
        torch.onnx.export(
            network, (inputs, ),
            path,
            dynamo=False,
            opset_version=opset,
            input_names=['input'],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True)
    if int4:
        model, _ = pack_int4(onnx.load(path))
        onnx.save(model, path)


def export_network(network: nn.Module,
                   out: str,
                   input_shape: Sequence[int],
                   quantize: bool = True,
                   opset: int = DEFAULT_OPSET,
                   overwrite: bool = False,
                   int4: bool = False) -> Dict:
    """Export ``network`` (tensor in, tensor(s) out) to ONNX.

    The file is written next to ``out`` under a temporary name and moved
    into place only when the export succeeded, so an existing file is never
    left half-written.

    Args:
        network (nn.Module): Float or fake-quantized network whose
            ``forward(x)`` returns a tensor or a tuple of tensors. An
            ``output_names(n)`` method, if present, names the outputs.
        out (str): The ``.onnx`` file to write.
        input_shape (Sequence[int]): ``(C, H, W)`` or ``(N, C, H, W)`` of
            the probe input; batch, height and width are dynamic in the
            graph.
        quantize (bool): Emit the trained quantization as QDQ nodes. False
            exports the float network (BatchNorm folded) instead.
        opset (int): ONNX opset, 13 to 20. Defaults to 13.
        overwrite (bool): Replace ``out`` if it exists. Defaults to False.
        int4 (bool): Store 4-bit grids with ONNX's int4/uint4 types
            (:func:`mmddaq.export.int4.pack_int4`; the graph becomes opset
            21). Defaults to False.

    Returns:
        dict: ``path``, ``input_shape``, ``output_names``,
        ``folded_batchnorms`` (number), ``network`` (the export-ready
        PyTorch module, which computes what the graph computes).
    """
    check_output_path(out, overwrite)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f'opset {opset} is not supported: {MIN_OPSET} is the first with '
            f'per-channel DequantizeLinear, {MAX_OPSET} the last PyTorch\'s '
            'TorchScript exporter writes (int4=True gives opset 21)')
    shape = normalize_input_shape(input_shape)
    if quantize and not quantized_layers(network):
        raise ValueError(
            f'{type(network).__name__} has no quantized layer (QuantConv2d '
            '/ QuantLinear): nothing to export as QDQ. Pass quantize=False '
            'for a float export.')
    network = network.eval()
    probe = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    export_net, pairs = build_export_network(network, probe, quantize)
    with torch.no_grad():
        outputs = export_net(probe)
    outputs = (outputs, ) if isinstance(outputs, torch.Tensor) else outputs
    num = len(outputs)
    names = network.output_names(num) if hasattr(
        network, 'output_names') else [f'output_{i}' for i in range(num)]
    out_dir = osp.dirname(osp.abspath(out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = osp.join(out_dir, f'.{osp.basename(out)}.{os.getpid()}.tmp')
    try:
        _torch_onnx_export(export_net, probe, tmp, names, opset,
                           int4 and quantize, [o.dim() for o in outputs])
        if osp.exists(out) and not overwrite:  # appeared meanwhile
            raise FileExistsError(f'output file "{out}" already exists')
        os.replace(tmp, out)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return dict(
        path=out,
        input_shape=shape,
        output_names=names,
        folded_batchnorms=len(pairs),
        network=export_net)


def roi_head_path(out: str) -> str:
    """Where the RoI-head graph of a two-stage detector exported to
    ``out`` goes: ``<out without .onnx>.roi_head.onnx``."""
    return osp.splitext(out)[0] + '.roi_head.onnx'


def export_onnx(model: nn.Module,
                out: str,
                input_shape: Sequence[int],
                quantize: bool = True,
                opset: int = DEFAULT_OPSET,
                overwrite: bool = False,
                int4: bool = False) -> Dict:
    """Export the network part of an OpenMMLab model to ONNX.

    The network part is chosen by :func:`network_of` (classifier logits,
    or a detector's raw dense-head outputs); see :func:`export_network`. A
    two-stage detector gives two graphs: ``out`` (backbone, neck, RPN; it
    also returns the neck features) and :func:`roi_head_path` of ``out``
    (the RoI box head on pooled RoI features).

    Args:
        model (nn.Module): mmpretrain classifier or mmdet detector, float
            or fake-quantized by mmddaq (e.g. ``DDAQ.quantized``).
        out (str): The ``.onnx`` file to write.
        input_shape (Sequence[int]): ``(C, H, W)`` or ``(N, C, H, W)`` of
            the normalised input; the batch axis is dynamic in the graph.
        quantize (bool): Emit QDQ nodes (True) or export the float network.
        opset (int): ONNX opset, 13 to 20. Defaults to 13.
        overwrite (bool): Replace ``out`` if it exists. Defaults to False.
        int4 (bool): Use int4/uint4 types for 4-bit grids (opset 21).

    Returns:
        dict: See :func:`export_network`; for a two-stage detector also
        ``roi_head``, the same for the RoI-head graph.
    """
    check_output_path(out, overwrite)
    two_stage = is_two_stage(model)
    if two_stage:  # both files are checked before either is written
        check_output_path(roi_head_path(out), overwrite)
        roi_network = RoIHeadNetwork(model)
    result = export_network(network_of(model), out, input_shape, quantize,
                            opset, overwrite, int4)
    if two_stage:
        result['roi_head'] = export_network(
            roi_network, roi_head_path(out),
            RoIHeadNetwork.input_shape(model), quantize, opset, overwrite,
            int4)
    return result


def onnxruntime_session(path: str,
                        threads: int = 1,
                        optimize: bool = True,
                        quantize_bias: bool = True):
    """An onnxruntime CPU session of ``path``.

    With all graph optimisations on (onnxruntime's default), onnxruntime's
    ``WeightBiasQuantization`` pass rounds each float bias of a QDQ conv to
    int32 at the step ``input_scale * weight_scale`` so that the layer can
    run on integer kernels. The fake-quantized PyTorch model keeps its bias
    in float, so this rounding (at most half a step per output channel) is
    a real, if small, difference; it grows with coarse grids (4 bits).
    ``quantize_bias=False`` switches that one pass off.

    Args:
        path (str): The ONNX file.
        threads (int): Intra-op threads. Defaults to 1.
        optimize (bool): Enable all graph optimisations (QDQ fusion into
            integer kernels included). Defaults to True.
        quantize_bias (bool): Let onnxruntime quantize float biases to
            int32. Defaults to True (onnxruntime's default).

    Returns:
        onnxruntime.InferenceSession: The session.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    disabled = [] if quantize_bias else ['WeightBiasQuantization']
    return ort.InferenceSession(
        path,
        sess_options=opts,
        providers=['CPUExecutionProvider'],
        disabled_optimizers=disabled)


def run_onnxruntime(session, inputs: torch.Tensor) -> List[np.ndarray]:
    """Outputs of ``session`` on ``inputs`` (float32 NCHW)."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: inputs.detach().cpu().numpy()})


def compare_outputs(reference: Sequence[torch.Tensor],
                    candidate: Sequence[np.ndarray]) -> Dict[str, float]:
    """How far ``candidate`` outputs are from ``reference`` outputs.

    Args:
        reference (Sequence[Tensor]): e.g. the PyTorch fake-quant outputs.
        candidate (Sequence[ndarray]): e.g. onnxruntime's outputs.

    Returns:
        dict: ``max_abs_diff``, ``mean_abs_diff``, ``output_range`` (the
        largest peak-to-peak range of a reference output) and
        ``max_abs_diff_over_range``.
    """
    if len(reference) != len(candidate):
        raise ValueError(f'{len(reference)} reference outputs vs '
                         f'{len(candidate)} candidate outputs')
    max_diff, sum_diff, count, out_range = 0., 0., 0, 0.
    for ref, cand in zip(reference, candidate):
        ref = ref.detach().cpu().float().numpy()
        if ref.shape != cand.shape:
            raise ValueError(f'shape {cand.shape} vs reference {ref.shape}')
        diff = np.abs(ref - cand)
        max_diff = max(max_diff, float(diff.max(initial=0.)))
        sum_diff += float(diff.sum())
        count += diff.size
        if ref.size:
            out_range = max(out_range, float(ref.max() - ref.min()))
    return dict(
        max_abs_diff=max_diff,
        mean_abs_diff=sum_diff / max(count, 1),
        output_range=out_range,
        max_abs_diff_over_range=max_diff / out_range if out_range else 0.)


def verify_export(path: str,
                  network: nn.Module,
                  inputs: torch.Tensor,
                  quantize_bias: bool = True) -> Dict[str, float]:
    """Compare onnxruntime's outputs of ``path`` with ``network``'s.

    Args:
        path (str): The exported file.
        network (nn.Module): The PyTorch network it should match (e.g. the
            fake-quantized model wrapped by :func:`network_of`).
        inputs (Tensor): Inputs for both.
        quantize_bias (bool): See :func:`onnxruntime_session`.

    Returns:
        dict: See :func:`compare_outputs`.
    """
    with torch.no_grad(), observation_disabled(network):
        reference = network(inputs)
    session = onnxruntime_session(path, quantize_bias=quantize_bias)
    return compare_outputs(reference, run_onnxruntime(session, inputs))


def load_quantized_model(config: str,
                         checkpoint: str,
                         cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the DDAQ model of ``config`` and load a trained checkpoint.

    Args:
        config (str): A DDAQ / PTQ config (``model.type='mmddaq.DDAQ'``).
        checkpoint (str): A checkpoint written by ``tools/train.py`` for it.
        cfg_options (dict, optional): Config overrides.

    Returns:
        nn.Module: The DDAQ model (eval mode, CPU); its ``quantized``
        attribute is the trained quantized model.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file "{config}" does not exist')
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(
            f'checkpoint file "{checkpoint}" does not exist')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    model_type = str(cfg.model.get('type', ''))
    if not model_type.endswith('DDAQ'):
        raise ValueError(
            f'config "{config}" builds a "{model_type}" model, not an '
            'mmddaq quantized model (mmddaq.DDAQ): export needs the '
            'quantization config the checkpoint was trained with')
    ckpt = load_checkpoint_safe(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f'checkpoint "{checkpoint}" holds no state_dict')
    state = {k[7:] if k.startswith('module.') else k: v
             for k, v in state.items()}
    if not any(k.startswith('quantized.') for k in state):
        raise ValueError(
            f'checkpoint "{checkpoint}" holds no quantized model (no '
            '"quantized.*" weights); it looks like a full-precision '
            'checkpoint. Quantize it first (tools/train.py with a DDAQ or '
            'PTQ config) and export the checkpoint that run writes.')
    if cfg.get('default_scope'):
        init_default_scope(cfg.default_scope)
    model_cfg = cfg.model.copy()
    model_cfg.fp_checkpoint = None  # both models are in the checkpoint
    model = MODELS.build(model_cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f'checkpoint "{checkpoint}" does not match the model of '
            f'"{config}": {len(missing)} missing keys {missing[:5]}, '
            f'{len(unexpected)} unexpected keys {unexpected[:5]}')
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_checkpoint(config: str,
                      checkpoint: str,
                      out: Optional[str] = None,
                      input_shape: Optional[Sequence[int]] = None,
                      overwrite: bool = False,
                      opset: int = DEFAULT_OPSET,
                      verify: bool = True,
                      cfg_options: Optional[dict] = None,
                      int4: bool = False) -> Dict:
    """Export the quantized model of a DDAQ / PTQ checkpoint to ONNX.

    Args:
        config (str): The quantization config.
        checkpoint (str): The checkpoint ``tools/train.py`` wrote.
        out (str, optional): Output file; defaults to the checkpoint's path
            with ``.onnx``.
        input_shape (Sequence[int], optional): ``C H W`` or ``N C H W``;
            defaults to the config's ``model.input_shape`` with batch 1.
        overwrite (bool): Replace an existing output file.
        opset (int): ONNX opset. Defaults to 13.
        verify (bool): Compare onnxruntime's outputs with the PyTorch
            fake-quantized model on two random inputs.
        cfg_options (dict, optional): Config overrides.
        int4 (bool): Use int4/uint4 types for 4-bit grids (opset 21).

    Returns:
        dict: What :func:`export_onnx` returns, plus, when ``verify``,
        ``verification`` (onnxruntime with its default optimisations vs the
        PyTorch fake-quantized model, see :func:`compare_outputs`) and
        ``verification_float_bias`` (the same with onnxruntime's bias
        quantization switched off).
    """
    if out is None:
        out = osp.splitext(checkpoint)[0] + '.onnx'
    # cheap checks first: nothing is loaded if the output is refused
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file "{config}" does not exist')
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(
            f'checkpoint file "{checkpoint}" does not exist')
    check_output_path(out, overwrite)
    model = load_quantized_model(config, checkpoint, cfg_options)
    shape = normalize_input_shape(input_shape or model.input_shape)
    result = export_onnx(
        model.quantized, out, shape, opset=opset, overwrite=overwrite,
        int4=int4)
    if verify:
        probe = torch.randn((2, ) + shape[1:],
                            generator=torch.Generator().manual_seed(1))
        network = network_of(model.quantized).eval()
        result['verification'] = verify_export(out, network, probe)
        result['verification_float_bias'] = verify_export(
            out, network, probe, quantize_bias=False)
        if 'roi_head' in result:
            roi = result['roi_head']
            feats = torch.randn((8, ) + tuple(roi['input_shape'][1:]),
                                generator=torch.Generator().manual_seed(2))
            roi_network = RoIHeadNetwork(model.quantized).eval()
            roi['verification'] = verify_export(roi['path'], roi_network,
                                                feats)
            roi['verification_float_bias'] = verify_export(
                roi['path'], roi_network, feats, quantize_bias=False)
    return result
