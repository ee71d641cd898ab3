"""Store 4-bit grids with ONNX's int4/uint4 types (opset 21).

The exporter writes every grid of at most 8 bits as int8/uint8 (see
:mod:`mmddaq.export.qdq`). ONNX opset 21 added 4-bit integer types to
``QuantizeLinear``/``DequantizeLinear``; this pass rewrites an exported
graph to use them where that is lossless:

- a weight ``DequantizeLinear`` whose int8 levels and zero points all lie
  in ``[-8, 7]`` reads an ``INT4`` initializer instead;
- an activation ``Clip -> QuantizeLinear`` whose clip bounds are exactly
  the ends of a 4-bit grid (``[0, 15]`` for uint8, ``[-8, 7]`` for int8)
  loses the ``Clip``: ``QuantizeLinear`` to ``UINT4``/``INT4`` saturates at
  the same levels.

The result computes the same function; whether a runtime has fast kernels
for it is another matter (onnxruntime's CPU provider runs 4-bit QDQ with
reference kernels and does not fuse it into integer convolutions).
"""
from typing import Dict, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The opset that introduced INT4/UINT4 QuantizeLinear/DequantizeLinear.
INT4_OPSET = 21


def _constant_values(graph) -> Dict[str, np.ndarray]:
    """Initializers, Constant outputs and Identity copies of them."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:  # nodes are topologically sorted
        if node.op_type == 'Constant' and node.attribute and \
                node.attribute[0].name == 'value':
            values[node.output[0]] = numpy_helper.to_array(
                node.attribute[0].t)
        elif node.op_type == 'Identity' and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def _int4_tensor(name: str, array: np.ndarray, signed: bool):
    data_type = TensorProto.INT4 if signed else TensorProto.UINT4
    return helper.make_tensor(name, data_type, list(array.shape),
                              array.astype(np.int64).flatten().tolist())


def _grid_of_clip(lo: float, hi: float, scale: float, zero_point: int):
    return (int(np.round(lo / scale + zero_point)),
            int(np.round(hi / scale + zero_point)))


def pack_int4(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, dict]:
    """Rewrite 4-bit grids of an exported QDQ graph with int4/uint4 types.

    Args:
        model (onnx.ModelProto): A graph written by the exporter (modified
            in place).

    Returns:
        tuple[onnx.ModelProto, dict]: The model (opset 21) and the counts
        ``weights`` and ``activations`` of rewritten tensors.
    """
    graph = model.graph
    values = _constant_values(graph)
    initializers = {i.name for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    counts = dict(weights=0, activations=0)
    new_inits = []

    for node in graph.node:
        if node.op_type != 'DequantizeLinear' or \
                node.input[0] not in initializers:
            continue
        q, zp = values[node.input[0]], values.get(node.input[2])
        if q.dtype != np.int8 or zp is None:
            continue
        if q.min(initial=0) < -8 or q.max(initial=0) > 7 or \
                zp.min(initial=0) < -8 or zp.max(initial=0) > 7:
            continue
        q_name, zp_name = f'{node.name or node.output[0]}_int4', \
            f'{node.name or node.output[0]}_zp_int4'
        new_inits += [_int4_tensor(q_name, q, True),
                      _int4_tensor(zp_name, zp, True)]
        node.input[0], node.input[2] = q_name, zp_name
        counts['weights'] += 1

    removed = set()
    for node in graph.node:
        if node.op_type != 'QuantizeLinear':
            continue
        clip = producers.get(node.input[0])
        if clip is None or clip.op_type != 'Clip' or len(clip.input) < 3:
            continue
        lo, hi = values.get(clip.input[1]), values.get(clip.input[2])
        scale, zp = values.get(node.input[1]), values.get(node.input[2])
        if any(v is None for v in (lo, hi, scale, zp)) or scale.size != 1:
            continue
        signed = zp.dtype == np.int8
        grid = _grid_of_clip(float(lo), float(hi), float(scale), int(zp))
        if grid != ((-8, 7) if signed else (0, 15)):
            continue
        dq_nodes = consumers.get(node.output[0], [])
        if not dq_nodes or any(d.op_type != 'DequantizeLinear'
                               for d in dq_nodes):
            continue
        zp_name = f'{node.name or node.output[0]}_zp_int4'
        new_inits.append(_int4_tensor(zp_name, zp.reshape(()), signed))
        node.input[0] = clip.input[0]
        node.input[2] = zp_name
        for dq in dq_nodes:
            dq.input[2] = zp_name
        if all(c is node for c in consumers.get(clip.output[0], [])):
            removed.add(id(clip))
        counts['activations'] += 1

    kept = [n for n in graph.node if id(n) not in removed]
    # the removed clips' bounds: constants nothing reads any more
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for n in kept for name in n.input} | outputs
        dead = [n for n in kept if n.op_type in ('Constant', 'Identity')
                and not any(o in used for o in n.output)]
        if not dead:
            break
        kept = [n for n in kept if all(n is not d for d in dead)]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    used = {name for n in graph.node for name in n.input}
    used.update(i.name for i in graph.input)
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    for opset in model.opset_import:
        if opset.domain in ('', 'ai.onnx'):
            opset.version = max(opset.version, INT4_OPSET)
    model.ir_version = max(model.ir_version, 10)
    return model, counts
