"""Where a quantized model's activation error costs its metric."""
import json

import pytest
import torch

from mmddaq.quantization.analysis import (activation_gaps,
                                          activations_in_float, layer_groups)
from test_reconstruction import _quantize, _trained_tiny_resnet


def _setup():
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(2)]
    q = _quantize(fp, 3, batches)
    return fp, q, torch.randn(32, 3, 12, 12, generator=gen)


def test_activations_in_float_only_inside_the_block():
    fp, q, x = _setup()
    with torch.no_grad():
        before = q(x)
        with activations_in_float(q, ['block1.conv1', 'block1.conv2']):
            partly = q(x)
            bits = {n: aq.bits for n, aq in
                    ((n, m.act_quantizer) for n, m in q.named_modules()
                     if hasattr(m, 'act_quantizer'))}
        after = q(x)
    assert torch.equal(before, after)
    assert not torch.equal(before, partly)
    assert bits['block1.conv1'] > 8 and bits['block2.conv1'] == 3
    with pytest.raises(ValueError, match='not quantized'):
        with activations_in_float(q, ['nope']):
            pass


def test_layer_groups_and_gaps_name_the_costly_activations():
    fp, q, x = _setup()
    groups = layer_groups(q, depth=1, each=['block2'])
    assert groups['block1'] == ['block1.conv1', 'block1.conv2']
    assert 'block2.conv1' in groups and 'block2.downsample.0' in groups
    assert 'block2' not in groups

    def error():  # higher is better, like a metric
        with torch.no_grad():
            return -float((q(x) - fp(x)).pow(2).mean())

    rows = activation_gaps(q, groups, error)
    assert rows[0]['group'] == '(all quantized)' and rows[0]['gain'] == 0
    every = rows[1]
    assert every['group'] == '(all activations in float)'
    assert every['gain'] > 0  # only the weights' error is left
    assert {r['group'] for r in rows[2:]} == set(groups)
    assert all(r['value'] == pytest.approx(rows[0]['value'] + r['gain'])
               for r in rows)
    assert error() == rows[0]['value']  # everything put back
    json.dumps(rows)


def test_the_tool_refuses_to_overwrite(tmp_path):
    import subprocess
    import sys
    sys.path.insert(0, 'tools')
    out = tmp_path / 'gaps.json'
    out.write_text('mine')
    ckpt = tmp_path / 'q.pth'
    ckpt.write_bytes(b'')
    proc = subprocess.run(
        [sys.executable, 'tools/activation_gaps.py',
         'configs/ddaq_retinanet_r18-w16_frozenbn_w4a4.py', str(ckpt),
         '--out', str(out)], capture_output=True, text=True)
    assert proc.returncode != 0 and 'exists' in proc.stderr
    assert out.read_text() == 'mine'
    proc = subprocess.run(
        [sys.executable, 'tools/activation_gaps.py',
         'configs/ddaq_retinanet_r18-w16_frozenbn_w4a4.py',
         str(tmp_path / 'missing.pth'), '--out', str(tmp_path / 'new.json')],
        capture_output=True, text=True)
    assert proc.returncode != 0 and 'checkpoint not found' in proc.stderr
    from activation_gaps import main
    with pytest.raises(SystemExit, match='--real needs --pool'):
        main(['configs/ddaq_retinanet_r18-w16_frozenbn_w4a4.py',
              'README.md', '--real', '--out', str(tmp_path / 'x.json')])


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_data_free_gaps_on_the_generators_samples(kind, tmp_path):
    import sys
    sys.path.insert(0, 'tools')
    from activation_gaps import pool_loss
    from test_detection import SIZE, build

    from mmddaq.quantization import (calibrate_activations,
                                     freeze_activations)
    model, _ = build(kind, tmp_path)
    calibrate_activations(model.quantized)
    x = torch.randn(4, 3, SIZE, SIZE)
    with torch.no_grad():
        model.adapter.forward(model.quantized, x,
                              reference=model.adapter.forward(
                                  model.fp_model, x))
    freeze_activations(model.quantized)
    evaluate = pool_loss(model, 8, seed=0)
    assert evaluate() < 0 and evaluate() == evaluate()  # same pool
    groups = layer_groups(model.quantized)
    rows = activation_gaps(model.quantized, groups, evaluate)
    assert rows[1]['gain'] > 0  # activations in float: closer to FP
    assert 'neck.fpn_convs' in groups
