"""ONNX export with QuantizeLinear/DequantizeLinear, run in onnxruntime.

Tolerances. A single quantized layer is exported exactly (same integers,
same scales, BatchNorm folded after weight quantization), so onnxruntime
without graph optimisations matches PyTorch to float rounding (1e-5 of the
output range). A whole network differs for two known reasons, both far
below one step of an 8-bit grid: float convolutions sum in a different
order (and folding BatchNorm reorders float products), which now and then
moves an activation across a rounding boundary of the next quantizer (one
step, 1/255 of that tensor's range), and onnxruntime's default
``WeightBiasQuantization`` rounds each float bias to int32 at the step
``s_x * s_w`` (at most half of it). At W8A8 such moves shift the outputs
by a few 8-bit steps at most, so the network tests allow 2% of the
network's output range (the largest peak-to-peak range over its outputs)
for the largest difference, about 5 steps of a 255-step grid, and 0.5% for
the mean difference.
"""
import copy
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope
from onnx import numpy_helper
from torch import nn

from conftest import DDAQ_CONFIG, FP_CONFIG, ROOT, tiny_ddaq_options
from mmddaq.apis import load_config
from mmddaq.export import (build_export_network, compare_outputs,
                           export_checkpoint, export_network, export_onnx,
                           network_of, onnxruntime_session, run_onnxruntime)
from mmddaq.quantization import (ModelQuantizer, activation_quantizers,
                                 calibrate_activations, freeze_activations,
                                 observation_disabled,
                                 step_activation_observers)

MAX_OVER_RANGE = 0.02
MEAN_OVER_RANGE = 0.005


def calibrate(network, shape, batches=3, seed=0, freeze=None):
    """Calibrate the activation ranges on random batches, then freeze."""
    gen = torch.Generator().manual_seed(seed)
    calibrate_activations(network)
    with torch.no_grad():
        for _ in range(batches):
            network(torch.randn(shape, generator=gen))
            step_activation_observers(network)
    for module in freeze or [network]:
        freeze_activations(module)


def build_tiny_ddaq(fp_checkpoint, w_bits=8, a_bits=8):
    init_default_scope('mmpretrain')
    opts = tiny_ddaq_options(fp_checkpoint)
    opts = {k: v for k, v in opts.items() if k.startswith('model.')}
    opts.update({'model.quantizer.w_bits': w_bits,
                 'model.quantizer.a_bits': a_bits})
    cfg = load_config(DDAQ_CONFIG, opts)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    calibrate(network_of(model.quantized), (8, 3, 32, 32))
    return model


def op_types(path):
    return [n.op_type for n in onnx.load(path).graph.node]


def constants(model):
    """Initializers, Constant outputs and Identity copies of them."""
    values = {i.name: numpy_helper.to_array(i)
              for i in model.graph.initializer}
    for node in model.graph.node:  # nodes are topologically sorted
        if node.op_type == 'Constant':
            values[node.output[0]] = numpy_helper.to_array(
                node.attribute[0].t)
        elif node.op_type == 'Identity' and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    return values


def check_qdq_graph(path):
    """QDQ on activations (per tensor) and weights (int8, axis 0)."""
    model = onnx.load(path)
    onnx.checker.check_model(model)
    inits = constants(model)
    types = [n.op_type for n in model.graph.node]
    assert 'QuantizeLinear' in types and 'DequantizeLinear' in types
    assert 'BatchNormalization' not in types
    weight_dq = [
        n for n in model.graph.node
        if n.op_type == 'DequantizeLinear' and n.input[0] in inits
    ]
    assert weight_dq, 'no weight is stored as an integer initializer'
    for node in weight_dq:
        q, scale = inits[node.input[0]], inits[node.input[1]]
        assert q.dtype == np.int8
        assert {a.name: a.i for a in node.attribute}.get('axis') == 0
        assert scale.shape == (q.shape[0], ) and (scale > 0).all()
    for node in model.graph.node:
        if node.op_type == 'QuantizeLinear':
            assert inits[node.input[1]].size == 1  # per tensor
            assert inits[node.input[2]].dtype in (np.uint8, np.int8)
    return types


def assert_close(reference, outputs):
    diff = compare_outputs(reference, outputs)
    assert diff['output_range'] > 0
    assert diff['max_abs_diff'] <= MAX_OVER_RANGE * diff['output_range'], \
        diff
    assert diff['mean_abs_diff'] <= MEAN_OVER_RANGE * diff['output_range'], \
        diff
    return diff


# ------------------------------------------------------- single layer, exact
class ConvBNReLU(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 8 * 8, 4)
        with torch.no_grad():  # a mirrored, a dead and ordinary channels
            self.bn.weight.copy_(torch.tensor([1.5, -0.7, 0., 0.3, 1., 2.]))
            self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.mark.parametrize('bits,symmetric', [(8, False), (4, False),
                                            (4, True), (3, False)])
def test_single_layer_export_is_exact(bits, symmetric, tmp_path):
    torch.manual_seed(0)
    quantizer = ModelQuantizer(
        w_bits=bits, a_bits=bits,
        weight_quantizer=dict(symmetric=symmetric),
        act_quantizer=dict(symmetric=symmetric))
    model = quantizer.quantize(ConvBNReLU().eval()).eval()
    calibrate(model, (4, 3, 8, 8))
    x = torch.randn(5, 3, 8, 8) * 1.5  # partly outside the ranges
    with torch.no_grad(), observation_disabled(model):
        reference = model(x)
    export_net, pairs = build_export_network(model, x)
    assert pairs == {'bn': 'conv'}
    with torch.no_grad():
        assert torch.allclose(export_net(x), reference, atol=1e-5)
    out = str(tmp_path / 'layer.onnx')
    export_network(model, out, (3, 8, 8))
    types = check_qdq_graph(out)
    # grids below 8 bits are kept by a Clip to the grid's end points
    assert ('Clip' in types) == (bits < 8)
    session = onnxruntime_session(out, optimize=False, quantize_bias=False)
    diff = compare_outputs([reference], run_onnxruntime(session, x))
    assert diff['max_abs_diff'] <= 1e-5 * diff['output_range'] + 1e-6, diff
    # every act quantizer's trained range made it into the graph
    assert len([t for t in types if t == 'QuantizeLinear']) == \
        len(activation_quantizers(model))


@pytest.mark.parametrize('bits,symmetric', [(4, False), (4, True),
                                            (3, False), (8, False)])
def test_int4_export_is_exact(bits, symmetric, tmp_path):
    torch.manual_seed(1)
    quantizer = ModelQuantizer(
        w_bits=bits, a_bits=bits, input_bits=None,  # the input at `bits` too
        weight_quantizer=dict(symmetric=symmetric),
        act_quantizer=dict(symmetric=symmetric))
    model = quantizer.quantize(ConvBNReLU().eval()).eval()
    calibrate(model, (4, 3, 8, 8))
    out = str(tmp_path / 'int4.onnx')
    export_network(model, out, (3, 8, 8), int4=True)
    graph = onnx.load(out)
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in (
        '', 'ai.onnx')) == 21
    types = [n.op_type for n in graph.graph.node]
    dtypes = {i.name: i.data_type for i in graph.graph.initializer}
    weight_types = [dtypes[n.input[0]] for n in graph.graph.node
                    if n.op_type == 'DequantizeLinear' and
                    n.input[0] in dtypes]
    act_zp_types = [dtypes.get(n.input[2]) for n in graph.graph.node
                    if n.op_type == 'QuantizeLinear']
    int4 = onnx.TensorProto.INT4
    act4 = int4 if symmetric else onnx.TensorProto.UINT4
    if bits == 4:  # every 4-bit grid uses the 4-bit types, no Clip left
        assert 'Clip' not in types
        assert set(weight_types) == {int4} and set(act_zp_types) == {act4}
    elif bits == 3:  # 3-bit weights fit int4; activations keep the Clip
        assert 'Clip' in types and set(weight_types) == {int4}
        assert int4 not in act_zp_types and act4 not in act_zp_types
    else:
        assert int4 not in weight_types
    x = torch.randn(5, 3, 8, 8) * 1.5
    with torch.no_grad(), observation_disabled(model):
        reference = model(x)
    session = onnxruntime_session(out, optimize=False, quantize_bias=False)
    diff = compare_outputs([reference], run_onnxruntime(session, x))
    assert diff['max_abs_diff'] <= 1e-5 * diff['output_range'] + 1e-6, diff
    # with onnxruntime's default optimisations it runs too
    assert_close([reference], run_onnxruntime(onnxruntime_session(out), x))


def test_float_export_folds_batchnorm(tmp_path):
    torch.manual_seed(0)
    model = ConvBNReLU().eval()
    out = str(tmp_path / 'fp.onnx')
    export_network(model, out, (2, 3, 8, 8), quantize=False)
    types = op_types(out)
    assert 'BatchNormalization' not in types
    assert 'QuantizeLinear' not in types and 'DequantizeLinear' not in types
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        reference = model(x)
    diff = compare_outputs([reference],
                           run_onnxruntime(onnxruntime_session(out), x))
    assert diff['max_abs_diff'] <= 1e-5 * diff['output_range'], diff


# ------------------------------------------------------------- networks
def test_export_tiny_classifier_w8a8(tiny_fp_checkpoint, tmp_path):
    model = build_tiny_ddaq(tiny_fp_checkpoint)
    out = str(tmp_path / 'cls.onnx')
    result = export_onnx(model.quantized, out, (3, 32, 32))
    assert result['output_names'] == ['logits']
    assert result['folded_batchnorms'] == 20  # every BN of the ResNet-18
    check_qdq_graph(out)
    x = torch.randn(6, 3, 32, 32)  # batch 6: the batch axis is dynamic
    network = network_of(model.quantized)
    with torch.no_grad(), observation_disabled(network):
        reference = network(x)
    outputs = run_onnxruntime(onnxruntime_session(out), x)
    assert outputs[0].shape == (6, 10)
    assert_close(reference, outputs)
    # the export did not touch the model it read
    with torch.no_grad(), observation_disabled(network):
        assert torch.equal(network(x)[0], reference[0])


def test_export_tiny_retinanet_w8a8(tmp_path):
    from test_detection import SIZE, build
    model, _ = build(
        'retinanet', tmp_path,
        quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=8, a_bits=8))
    model.eval()
    network = network_of(model.quantized)
    calibrate(network, (2, 3, SIZE, SIZE))
    out = str(tmp_path / 'retina.onnx')
    result = export_onnx(model.quantized, out, (3, SIZE, SIZE))
    levels = 5
    assert result['output_names'] == \
        [f'cls_score_l{i}' for i in range(levels)] + \
        [f'bbox_pred_l{i}' for i in range(levels)]
    assert result['folded_batchnorms'] > 0
    types = check_qdq_graph(out)
    assert 'NonMaxSuppression' not in types  # post-processing stays outside
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad(), observation_disabled(network):
        reference = network(x)
    # the graph itself is the fake-quantized network
    outputs = run_onnxruntime(
        onnxruntime_session(out, quantize_bias=False), x)
    assert [tuple(r.shape) for r in reference] == [o.shape for o in outputs]
    assert_close(reference, outputs)
    # onnxruntime's default bias-to-int32 pass moves the outputs somewhat
    # (by how much depends on the onnxruntime version); it still runs
    default = compare_outputs(reference,
                              run_onnxruntime(onnxruntime_session(out), x))
    assert default['max_abs_diff_over_range'] < 0.15, default


def test_export_tiny_faster_rcnn_two_graphs(tmp_path):
    from test_detection import SIZE, build

    from mmddaq.export import RoIHeadNetwork, roi_head_path
    from mmddaq.export.evaluate import OnnxRuntimeModel
    from mmddaq.quantization import calibrate_activations, \
        step_activation_observers, freeze_activations
    model, _ = build(
        'faster_rcnn', tmp_path,
        quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=8, a_bits=8))
    model.eval()
    detector = model.quantized
    # calibrate the whole detector (RoI head on the FP proposals)
    gen = torch.Generator().manual_seed(0)
    calibrate_activations(detector)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(2, 3, SIZE, SIZE, generator=gen)
            ref = model.adapter.forward(model.fp_model, x)
            model.adapter.forward(detector, x, reference=ref)
            step_activation_observers(detector)
    freeze_activations(detector)
    out = str(tmp_path / 'frcnn.onnx')
    result = export_onnx(detector, out, (3, SIZE, SIZE))
    names = result['output_names']
    assert names[0] == 'rpn_cls_score_l0' and names[-1].startswith('neck_l')
    assert sum(n.startswith('neck_l') for n in names) == len(names) // 3
    roi = result['roi_head']
    assert roi['path'] == roi_head_path(out) and osp.isfile(roi['path'])
    assert roi['output_names'] == ['cls_score', 'bbox_pred']
    check_qdq_graph(out)
    check_qdq_graph(roi['path'])
    network = network_of(detector)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad(), observation_disabled(network):
        reference = network(x)
    assert_close(reference, run_onnxruntime(
        onnxruntime_session(out, quantize_bias=False), x))
    feats = torch.randn(5, *roi['input_shape'][1:])
    roi_net = RoIHeadNetwork(detector)
    with torch.no_grad(), observation_disabled(roi_net):
        roi_ref = roi_net(feats)
    assert_close(roi_ref, run_onnxruntime(
        onnxruntime_session(roi['path'], quantize_bias=False), feats))
    # both graphs chained through mmdet's proposal, RoIAlign and decoding
    # give the fake-quant model's detections (rescaled to the original size)
    from mmdet.structures import DetDataSample
    samples = [DetDataSample(metainfo=dict(
        img_shape=(SIZE, SIZE), ori_shape=(2 * SIZE, 3 * SIZE),
        scale_factor=(1 / 3, 1 / 2), pad_shape=(SIZE, SIZE),
        batch_input_shape=(SIZE, SIZE))) for _ in range(2)]
    backed = OnnxRuntimeModel(
        detector, onnxruntime_session(out, quantize_bias=False),
        onnxruntime_session(roi['path'], quantize_bias=False))

    def both():
        outputs = [torch.from_numpy(o)
                   for o in run_onnxruntime(backed.session, x)]
        ort = backed._postprocess(outputs, [s.clone() for s in samples])
        with torch.no_grad(), observation_disabled(detector):
            ref = detector.predict(x, [s.clone() for s in samples])
        return [(a.pred_instances, b.pred_instances)
                for a, b in zip(ort, ref)]

    from mmdet.structures.bbox import bbox_overlaps
    for pa, pb in both():
        assert len(pa) == len(pb) > 0
        assert float(pa.bboxes[:, 2].max()) > SIZE  # rescaled
        # the same scores within the graphs' tolerance (a value on a
        # rounding boundary may land one quantization level away in
        # onnxruntime, depending on the CPU's kernels); the same boxes up
        # to those one-level shifts of the box deltas and to near-equal
        # scores swapped at the max_per_img cut-off: each detection
        # overlaps one of PyTorch's (broken decoding or rescaling overlaps
        # none)
        gap = (pa.scores.sort().values - pb.scores.sort().values).abs()
        assert float(gap.max()) <= MAX_OVER_RANGE, float(gap.max())
        assert float(gap.mean()) <= MEAN_OVER_RANGE, float(gap.mean())
        same = bbox_overlaps(pa.bboxes, pb.bboxes).amax(dim=1) > 0.5
        assert float(same.float().mean()) >= 0.9
    # no proposal survives: no detection, as in PyTorch
    detector.rpn_head.test_cfg.min_bbox_size = 10 * SIZE
    for pa, pb in both():
        assert len(pa) == len(pb) == 0
    # refuses to overwrite either file
    with pytest.raises(FileExistsError):
        export_onnx(detector, out, (3, SIZE, SIZE))


# ------------------------------------------------------------------ CLI
def write_tiny_config(tmp_path, w_bits=8, a_bits=8):
    path = tmp_path / 'tiny_ddaq.py'
    path.write_text(
        f'_base_ = {DDAQ_CONFIG!r}\n'
        'model = dict(\n'
        '    fp_checkpoint=None,\n'
        '    architecture=dict(\n'
        '        backbone=dict(stem_channels=8, base_channels=8),\n'
        '        head=dict(in_channels=64)),\n'
        '    generator=dict(base_channels=16, latent_dim=16),\n'
        f'    quantizer=dict(w_bits={w_bits}, a_bits={a_bits}))\n')
    return str(path)


@pytest.fixture
def tiny_quantized_checkpoint(tiny_fp_checkpoint, tmp_path):
    model = build_tiny_ddaq(tiny_fp_checkpoint)
    ckpt = str(tmp_path / 'iter_4.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    return write_tiny_config(tmp_path), ckpt


def test_cli_exports_checkpoint(tiny_quantized_checkpoint, tmp_path):
    config, ckpt = tiny_quantized_checkpoint
    out = str(tmp_path / 'cli' / 'model.onnx')
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools', 'export.py'), config, ckpt,
         '--out', out, '--input-shape', '3', '32', '32'],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Exported' in proc.stdout and 'vs PyTorch fake-quant' in \
        proc.stdout
    check_qdq_graph(out)
    assert not [f for f in os.listdir(osp.dirname(out)) if f.endswith(
        '.tmp')], 'temporary file left behind'


def test_export_checkpoint_verifies_and_refuses_existing_output(
        tiny_quantized_checkpoint, tmp_path):
    config, ckpt = tiny_quantized_checkpoint
    out = str(tmp_path / 'model.onnx')
    result = export_checkpoint(config, ckpt, out=out)
    ver = result['verification']
    assert ver['max_abs_diff'] <= MAX_OVER_RANGE * ver['output_range']
    before = open(out, 'rb').read()
    with pytest.raises(FileExistsError, match='already exists'):
        export_checkpoint(config, ckpt, out=out)
    assert open(out, 'rb').read() == before  # untouched
    # --overwrite replaces it
    export_checkpoint(config, ckpt, out=out, overwrite=True, verify=False)
    assert osp.isfile(out)
    # default output path: next to the checkpoint
    result = export_checkpoint(config, ckpt, verify=False)
    assert result['path'] == osp.splitext(ckpt)[0] + '.onnx'


# ------------------------------------------------------------ bad input
def test_bad_inputs_are_clear_errors(tiny_fp_checkpoint,
                                     tiny_quantized_checkpoint, tmp_path):
    config, ckpt = tiny_quantized_checkpoint
    out = str(tmp_path / 'x.onnx')
    with pytest.raises(FileNotFoundError, match='config file'):
        export_checkpoint(str(tmp_path / 'nope.py'), ckpt, out=out)
    with pytest.raises(FileNotFoundError, match='checkpoint file'):
        export_checkpoint(config, str(tmp_path / 'nope.pth'), out=out)
    with pytest.raises(ValueError, match='not an mmddaq quantized model'):
        export_checkpoint(FP_CONFIG, tiny_fp_checkpoint, out=out)
    with pytest.raises(ValueError, match='holds no quantized model'):
        export_checkpoint(config, tiny_fp_checkpoint, out=out)
    with pytest.raises(ValueError, match='must end with .onnx'):
        export_checkpoint(config, ckpt, out=str(tmp_path / 'x.txt'))
    with pytest.raises(ValueError, match='input shape'):
        export_checkpoint(config, ckpt, out=out, input_shape=(32, 32))
    with pytest.raises(ValueError, match='opset'):
        export_checkpoint(config, ckpt, out=out, opset=11)
    assert not osp.exists(out)


def test_uncalibrated_or_float_models_are_refused(tiny_fp_checkpoint,
                                                  tmp_path):
    model = build_tiny_ddaq(tiny_fp_checkpoint)
    fresh = copy.deepcopy(model.quantized)
    for q in activation_quantizers(fresh):  # as if never calibrated
        q.observer.num_batches.zero_()
    with pytest.raises(ValueError, match='never calibrated'):
        export_onnx(fresh, str(tmp_path / 'a.onnx'), (3, 32, 32))
    with pytest.raises(ValueError, match='no quantized layer'):
        export_onnx(model.fp_model, str(tmp_path / 'b.onnx'), (3, 32, 32))
    assert not os.listdir(tmp_path)
