"""onnxruntime CPU latency and accuracy of exported quantized models.

    python tools/benchmark_export.py --out docs/benchmarks/export.json
    python tools/benchmark_export.py --out export.json --suites digits \
        --repeats 30 --threads 1

For each suite the full-precision model is trained if missing, quantized to
W8A8 with naive data-free PTQ (activation ranges calibrated on Gaussian
noise in the normalised input space, the ``configs/baselines/ptq_*``
recipe), then exported twice: with QuantizeLinear/DequantizeLinear
(``mmddaq.export``) and as the plain FP32 network (BatchNorm folded, no
QDQ). Both graphs run in onnxruntime's CPU provider with all graph
optimisations, in the same process, alternating, batch 1 and batch 32;
the median of ``--repeats`` runs is reported. Digits also reports top-1 on
the 540 held-out images: PyTorch fake-quant vs the exported graph in
onnxruntime (with and without onnxruntime's int32 bias rounding).
``--quantized CONFIG CHECKPOINT`` (repeatable) adds the rows of an
existing digits checkpoint, e.g. a DDAQ W4A4 run: top-1 and latency of its
default export (int8/uint8 QDQ + Clip) and of its ``int4=True`` export
(opset 21 int4/uint4 QDQ types).

Rows have the format of ``tools/benchmark.py``::

    {"suite": "export", "model", "method", "w_bits", "a_bits", "seed",
     "metric", "value", "seconds"}
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
import onnx  # noqa: E402
import torch  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

from mmddaq.apis import ensure_fp_checkpoint, load_config  # noqa: E402
from mmddaq.export import (compare_outputs, export_onnx,  # noqa: E402
                           load_quantized_model, network_of,
                           onnxruntime_session, run_onnxruntime)
from mmddaq.quantization import (calibrate_activations,  # noqa: E402
                                 freeze_activations, observation_disabled,
                                 step_activation_observers)
from mmddaq.registry import MODELS  # noqa: E402

SUITES = {
    'digits':
    dict(
        model='resnet18-w16',
        fp_config='configs/fp_resnet18-w16_digits.py',
        fp_work_dir='work_dirs/fp_resnet18-w16_digits',
        quant_config='configs/baselines/ptq_resnet18-w16_digits_w4a4.py',
        calib_iters=50,
        calib_batch=64,
        top1=True),
    'shapes-retinanet':
    dict(
        model='retinanet-r18-w16',
        fp_config='configs/fp_retinanet_r18-w16_shapes.py',
        fp_work_dir='work_dirs/fp_retinanet_r18-w16_shapes',
        quant_config='configs/ddaq_retinanet_r18-w16_shapes_w4a4.py',
        calib_iters=50,
        calib_batch=8,
        top1=False),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='JSON file of result rows')
    p.add_argument(
        '--suites', nargs='+', default=list(SUITES), choices=list(SUITES))
    p.add_argument('--batches', type=int, nargs='+', default=[1, 32])
    p.add_argument('--repeats', type=int, default=20)
    p.add_argument('--threads', type=int, default=1,
                   help='onnxruntime intra-op threads')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument(
        '--quantized', nargs=2, action='append', default=[],
        metavar=('CONFIG', 'CHECKPOINT'),
        help='also report top-1 of this digits checkpoint exported')
    return p.parse_args(argv)


def ptq_w8a8(suite: dict, fp_checkpoint: str, seed: int):
    """The DDAQ model of the suite with W8A8 ranges from Gaussian noise."""
    cfg = load_config(
        suite['quant_config'], {
            'model.fp_checkpoint': fp_checkpoint,
            'model.quantizer.w_bits': 8,
            'model.quantizer.a_bits': 8,
            'model.sample_source': 'gaussian',
            'model.generator': None,
        })
    if cfg.get('default_scope'):
        init_default_scope(cfg.default_scope)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model).eval()
    network = network_of(model.quantized)
    calibrate_activations(model.quantized)
    with torch.no_grad():
        for _ in range(suite['calib_iters']):
            x, _ = model.sample_inputs(suite['calib_batch'])
            network(x)
            step_activation_observers(model.quantized)
    freeze_activations(model.quantized)
    return model, cfg


def digits_test_set(cfg, model):
    """Normalised inputs and labels of the held-out digits."""
    loader = Runner.build_dataloader(cfg.test_dataloader)
    inputs, labels = [], []
    for batch in loader:
        data = model.data_preprocessor(batch, False)
        inputs.append(data['inputs'])
        labels.append(
            torch.cat([s.gt_label for s in data['data_samples']]))
    return torch.cat(inputs), torch.cat(labels)


def top1(logits, labels) -> float:
    return float((torch.as_tensor(logits).argmax(1) == labels).float()
                 .mean() * 100)


def torch_logits(network, inputs):
    with torch.no_grad(), observation_disabled(network):
        return torch.cat([network(x)[0] for x in inputs.split(128)])


def ort_logits(session, inputs):
    return torch.cat([
        torch.from_numpy(run_onnxruntime(session, x)[0])
        for x in inputs.split(128)
    ])


def median_latencies(sessions, x, repeats):
    """Median ms of each session on ``x``, runs alternating."""
    for s in sessions:
        for _ in range(3):
            run_onnxruntime(s, x)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            run_onnxruntime(s, x)
            t.append(time.perf_counter() - start)
    return [statistics.median(t) * 1e3 for t in times]


def optimized_op_counts(path, threads):
    """Op types of the graph onnxruntime actually runs (after fusion)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.graph_optimization_level = \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = path + '.opt.onnx'
    ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    counts = Counter(n.op_type for n in onnx.load(
        opts.optimized_model_filepath).graph.node)
    os.remove(opts.optimized_model_filepath)
    return counts


class Rows:
    """Result rows, saved after every addition."""

    def __init__(self, path):
        self.path = path
        self.rows = []

    def add(self, model, method, bits, metric, value, seconds, seed):
        self.rows.append(
            dict(suite='export', model=model, method=method, w_bits=bits[0],
                 a_bits=bits[1], seed=seed, metric=metric,
                 value=round(float(value), 4), seconds=round(seconds, 2)))
        print(json.dumps(self.rows[-1]))
        os.makedirs(osp.dirname(osp.abspath(self.path)), exist_ok=True)
        with open(self.path, 'w') as f:
            json.dump(self.rows, f, indent=1)


def accuracy_rows(rows, name, method, bits, model, path, inputs, labels,
                  seed, threads):
    start = time.perf_counter()
    network = network_of(model.quantized)
    reference = torch_logits(network, inputs)
    rows.add(name, method, bits, 'top1_torch_fakequant',
             top1(reference, labels), time.perf_counter() - start, seed)
    for metric, quantize_bias in (('top1_ort', True),
                                  ('top1_ort_float_bias', False)):
        start = time.perf_counter()
        session = onnxruntime_session(path, threads,
                                      quantize_bias=quantize_bias)
        logits = ort_logits(session, inputs)
        rows.add(name, method, bits, metric, top1(logits, labels),
                 time.perf_counter() - start, seed)
        diff = compare_outputs([reference], [logits.numpy()])
        rows.add(name, method, bits,
                 metric.replace('top1', 'max_abs_diff_over_range'),
                 diff['max_abs_diff_over_range'], 0., seed)
        rows.add(name, method, bits, metric.replace('top1', 'agreement'),
                 (logits.argmax(1) == reference.argmax(1)).float().mean() *
                 100, 0., seed)


def run_suite(name, args, rows, tmp):
    suite = SUITES[name]
    fp_ckpt = ensure_fp_checkpoint(suite['fp_config'], suite['fp_work_dir'])
    start = time.perf_counter()
    model, cfg = ptq_w8a8(suite, fp_ckpt, args.seed)
    shape = tuple(model.input_shape)
    q_path = osp.join(tmp, f'{name}_w8a8.onnx')
    f_path = osp.join(tmp, f'{name}_fp32.onnx')
    export_onnx(model.quantized, q_path, shape)
    export_onnx(model.fp_model, f_path, shape, quantize=False)
    prep = time.perf_counter() - start
    ops = optimized_op_counts(q_path, args.threads)
    convs = ops['QLinearConv'] + ops['Conv'] + ops['FusedConv']
    rows.add(suite['model'], 'ptq', (8, 8), 'ort_qlinearconv_of_convs',
             ops['QLinearConv'] / max(convs, 1) * 100, prep, args.seed)
    sessions = [onnxruntime_session(p, args.threads) for p in (f_path,
                                                               q_path)]
    for batch in args.batches:
        start = time.perf_counter()
        x = torch.randn((batch, ) + shape,
                        generator=torch.Generator().manual_seed(batch))
        fp_ms, q_ms = median_latencies(sessions, x, args.repeats)
        seconds = time.perf_counter() - start
        rows.add(suite['model'], 'fp32', (32, 32), f'ort_latency_ms_b{batch}',
                 fp_ms, seconds, args.seed)
        rows.add(suite['model'], 'ptq', (8, 8), f'ort_latency_ms_b{batch}',
                 q_ms, seconds, args.seed)
        rows.add(suite['model'], 'ptq', (8, 8),
                 f'ort_int8_over_fp32_latency_b{batch}', q_ms / fp_ms,
                 seconds, args.seed)
    if not suite['top1']:
        x = torch.randn((2, ) + shape, generator=torch.Generator().manual_seed(
            1))
        with torch.no_grad(), observation_disabled(model.quantized):
            reference = network_of(model.quantized)(x)
        diff = compare_outputs(reference, run_onnxruntime(sessions[1], x))
        rows.add(suite['model'], 'ptq', (8, 8),
                 'max_abs_diff_over_range_ort', diff[
                     'max_abs_diff_over_range'], 0., args.seed)
        return
    inputs, labels = digits_test_set(cfg, model)
    start = time.perf_counter()
    rows.add(suite['model'], 'fp32', (32, 32), 'top1_ort',
             top1(ort_logits(sessions[0], inputs), labels),
             time.perf_counter() - start, args.seed)
    accuracy_rows(rows, suite['model'], 'ptq', (8, 8), model, q_path, inputs,
                  labels, args.seed, args.threads)
    for i, (config, checkpoint) in enumerate(args.quantized):
        extra = load_quantized_model(config, checkpoint)
        method = osp.basename(osp.dirname(checkpoint)) or f'extra{i}'
        bits = (extra.quantizer.w_bits, extra.quantizer.a_bits)
        path = osp.join(tmp, f'extra_{i}.onnx')
        path4 = osp.join(tmp, f'extra_{i}_int4.onnx')
        export_onnx(extra.quantized, path, tuple(extra.input_shape))
        export_onnx(extra.quantized, path4, tuple(extra.input_shape),
                    int4=True)
        accuracy_rows(rows, suite['model'], method, bits, extra, path,
                      inputs, labels, args.seed, args.threads)
        start = time.perf_counter()
        rows.add(suite['model'], method, bits, 'top1_ort_int4',
                 top1(ort_logits(onnxruntime_session(path4, args.threads),
                                 inputs), labels),
                 time.perf_counter() - start, args.seed)
        extra_sessions = [sessions[0]] + [
            onnxruntime_session(p, args.threads) for p in (path, path4)
        ]
        for batch in args.batches:
            start = time.perf_counter()
            x = torch.randn((batch, ) + shape,
                            generator=torch.Generator().manual_seed(batch))
            fp_ms, q_ms, q4_ms = median_latencies(extra_sessions, x,
                                                  args.repeats)
            seconds = time.perf_counter() - start
            rows.add(suite['model'], method, bits,
                     f'ort_latency_ms_b{batch}', q_ms, seconds, args.seed)
            rows.add(suite['model'], method, bits,
                     f'ort_int4_latency_ms_b{batch}', q4_ms, seconds,
                     args.seed)
            rows.add(suite['model'], method, bits,
                     f'ort_int8_over_fp32_latency_b{batch}', q_ms / fp_ms,
                     seconds, args.seed)
            rows.add(suite['model'], method, bits,
                     f'ort_int4_over_fp32_latency_b{batch}', q4_ms / fp_ms,
                     seconds, args.seed)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = Rows(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.suites:
            run_suite(name, args, rows, tmp)
    return rows.rows


if __name__ == '__main__':
    main()
