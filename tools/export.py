"""Export a quantized checkpoint to ONNX with QuantizeLinear/DequantizeLinear.

    python tools/export.py CONFIG CHECKPOINT [--out FILE.onnx] \
        [--input-shape C H W] [--overwrite] [--opset 13] [--int4] \
        [--no-verify]

CONFIG is the DDAQ / PTQ config the checkpoint was trained with (the
checkpoint holds the FP and the quantized model; the quantized one is
exported). The graph takes the normalised input (after the data
preprocessor) and returns the logits (classifiers) or the raw per-level
head outputs (detectors; box decoding and NMS stay outside). A two-stage
detector gives a second file, FILE.roi_head.onnx (the RoI box head on
pooled RoI features; proposals, NMS and RoIAlign run between the two
graphs, see mmddaq.export.evaluate). BatchNorm is
folded; weights are int8 initializers with per-channel DequantizeLinear;
layer inputs go through per-tensor QuantizeLinear/DequantizeLinear.
Unless --no-verify, onnxruntime's outputs are compared with the PyTorch
fake-quantized model on random inputs and the differences printed.
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import mmddaq  # noqa: E402,F401
from mmengine.config import DictAction  # noqa: E402

from mmddaq.export import export_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Export a quantized checkpoint to ONNX (QDQ)')
    parser.add_argument('config', help='the DDAQ / PTQ config')
    parser.add_argument('checkpoint', help='checkpoint written by train.py')
    parser.add_argument(
        '--out', help='output .onnx file (default: CHECKPOINT with .onnx)')
    parser.add_argument(
        '--input-shape',
        type=int,
        nargs='+',
        help='C H W or N C H W of the normalised input (default: the '
        "config's model.input_shape, batch 1; the batch axis is dynamic)")
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace the output file if it exists')
    parser.add_argument(
        '--opset', type=int, default=13, help='ONNX opset (13-20)')
    parser.add_argument(
        '--int4',
        action='store_true',
        help='store 4-bit grids with int4/uint4 QDQ types (opset 21) '
        'instead of int8/uint8 + Clip')
    parser.add_argument(
        '--no-verify',
        action='store_true',
        help='skip the onnxruntime vs PyTorch comparison')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction, help='overrides')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    result = export_checkpoint(
        args.config,
        args.checkpoint,
        out=args.out,
        input_shape=args.input_shape,
        overwrite=args.overwrite,
        opset=args.opset,
        verify=not args.no_verify,
        cfg_options=args.cfg_options,
        int4=args.int4)
    print(f'Exported {result["path"]}: input {list(result["input_shape"])} '
          f'(batch dynamic), outputs {result["output_names"]}, '
          f'{result["folded_batchnorms"]} BatchNorm layers folded')
    graphs = [('', result)]
    if 'roi_head' in result:
        roi = result['roi_head']
        print(f'Exported {roi["path"]} (RoI head): input '
              f'{list(roi["input_shape"])} (RoIs dynamic), outputs '
              f'{roi["output_names"]}')
        graphs.append(('RoI head: ', roi))
    for prefix, graph in graphs:
        for key in ('verification', 'verification_float_bias'):
            if key in graph:
                what = 'onnxruntime' if key == 'verification' else \
                    'onnxruntime without bias quantization'
                print(f'{prefix}{what} vs PyTorch fake-quant: '
                      f'{json.dumps(graph[key])}')
    return result


if __name__ == '__main__':
    main()
