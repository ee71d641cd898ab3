"""Mixed-precision bit allocation: the allocator, the policy, the CLI."""
import logging
import os
import random
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import MODELS, init_default_scope
from torch import nn

from conftest import DDAQ_CONFIG, ROOT
from mmddaq.quantization import (GreedyBitAllocator, LayerCost,
                                 ModelQuantizer, average_bits,
                                 costs_from_sensitivity, pinned_layers,
                                 quantized_layers, weight_quant_error,
                                 weight_size_bits)
from mmddaq.utils.checkpoint import load_checkpoint_safe

CANDIDATES = (2, 3, 4, 5, 6, 8)


def make_layers(sensitivities, numels, candidates=CANDIDATES):
    return [
        LayerCost(f'layer{i}', n, costs_from_sensitivity(s, n, candidates))
        for i, (s, n) in enumerate(zip(sensitivities, numels))
    ]


def used_bits(layers, bits):
    return sum(layer.numel * bits[layer.name] for layer in layers)


def random_problem(seed, num=12):
    rng = random.Random(seed)
    sens = [10**rng.uniform(-3, 1) for _ in range(num)]
    numels = [rng.choice([64, 576, 2304, 9216, 36864]) for _ in range(num)]
    return make_layers(sens, numels)


@pytest.mark.parametrize('budget', [2.0, 2.7, 3.0, 4.0, 4.6, 6.0, 8.0])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_budget_met_from_below_and_nothing_fits_after(budget, seed):
    layers = random_problem(seed)
    allocator = GreedyBitAllocator(CANDIDATES, budget)
    bits = allocator.allocate(layers)
    assert list(bits) == [layer.name for layer in layers]
    assert set(bits.values()) <= set(CANDIDATES)
    total = sum(layer.numel for layer in layers)
    used = used_bits(layers, bits)
    assert used <= budget * total + 1e-6
    # greedy stops only when no upgrade of any layer fits the budget
    # (costs strictly decrease with bits here)
    left = allocator.budget_bits(layers) - used
    for layer in layers:
        higher = [b for b in CANDIDATES if b > bits[layer.name]]
        if higher:
            assert layer.numel * (higher[0] - bits[layer.name]) > left


def test_more_important_layers_get_at_least_as_many_bits():
    rng = random.Random(3)
    for trial in range(20):
        sens = [10**rng.uniform(-3, 1) for _ in range(10)]
        layers = make_layers(sens, [2304] * 10)
        budget = rng.choice([2.5, 3.0, 3.5, 4.0, 5.0, 6.5])
        bits = GreedyBitAllocator(CANDIDATES, budget).allocate(layers)
        for a, sa in zip(layers, sens):
            for b, sb in zip(layers, sens):
                if sa > sb:
                    assert bits[a.name] >= bits[b.name], (trial, budget)
        # and the budget is actually used to differentiate them
        if 2.5 < budget < 8:
            assert len(set(bits.values())) > 1


def test_allocation_is_deterministic():
    layers = random_problem(7)
    first = GreedyBitAllocator(CANDIDATES, 4.0).allocate(layers)
    for _ in range(3):
        again = GreedyBitAllocator(CANDIDATES, 4.0).allocate(list(layers))
        assert again == first


@pytest.mark.parametrize('budget', [3.0, 4.0, 5.0, 6.0])
def test_uniform_importance_gives_uniform_bits_on_the_grid(budget):
    numels = [432, 2304, 4608, 9216, 36864, 1280]
    layers = make_layers([1.0] * len(numels), numels)
    bits = GreedyBitAllocator(CANDIDATES, budget).allocate(layers)
    assert set(bits.values()) == {int(budget)}


@pytest.mark.parametrize('budget', [3.5, 4.25, 4.9])
def test_uniform_importance_off_the_grid_is_near_uniform(budget):
    # equal sizes: bits differ by at most one step
    layers = make_layers([1.0] * 8, [2304] * 8)
    bits = GreedyBitAllocator(CANDIDATES, budget).allocate(layers)
    assert max(bits.values()) - min(bits.values()) <= 1
    assert min(bits.values()) == int(budget)
    # mixed sizes: every layer gets at least the budget's floor (what is
    # left after that goes to the layers it fits)
    numels = [432, 2304, 4608, 9216, 36864, 1280]
    layers = make_layers([1.0] * len(numels), numels)
    bits = GreedyBitAllocator(CANDIDATES, budget).allocate(layers)
    assert min(bits.values()) == int(budget)
    assert used_bits(layers, bits) <= budget * sum(numels)


def test_importance_shifts_bits_towards_sensitive_layers():
    # same size, one layer 100x more sensitive: it gets more bits and the
    # budget still holds
    layers = make_layers([100., 1., 1., 1.], [1000] * 4)
    bits = GreedyBitAllocator(CANDIDATES, 4.0).allocate(layers)
    assert bits['layer0'] > 4 > min(bits.values())
    assert used_bits(layers, bits) <= 4 * 4000


def test_bad_budgets_and_inputs_are_clear_errors():
    with pytest.raises(ValueError, match='below the smallest candidate'):
        GreedyBitAllocator(CANDIDATES, 1.5)
    with pytest.raises(ValueError, match='below the smallest candidate'):
        GreedyBitAllocator((4, 8), 3.9)
    with pytest.raises(ValueError, match='positive number'):
        GreedyBitAllocator(CANDIDATES, float('nan'))
    with pytest.raises(ValueError, match='Unsupported candidate'):
        GreedyBitAllocator((1, 4))
    with pytest.raises(ValueError, match='pass-through'):
        GreedyBitAllocator((4, 16))
    allocator = GreedyBitAllocator(CANDIDATES, 4.0)
    with pytest.raises(ValueError, match='no cost for bit-widths'):
        allocator.allocate([LayerCost('a', 10, {2: 1., 4: .1})])
    with pytest.raises(ValueError, match='listed twice'):
        allocator.allocate(make_layers([1, 1], [8, 8])[:1] * 2)
    with pytest.raises(ValueError, match='no layers'):
        allocator.allocate([])
    # a budget above every candidate is met from below: all at the maximum
    bits = GreedyBitAllocator(CANDIDATES, 12).allocate(
        make_layers([1, 2], [8, 8]))
    assert set(bits.values()) == {8}


def test_measured_weight_error_shrinks_about_4x_per_bit():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    errs = [weight_quant_error(w, b) for b in (2, 3, 4, 5, 6)]
    ratios = [a / b for a, b in zip(errs, errs[1:])]
    assert all(2.5 < r < 6 for r in ratios), ratios


class Net(nn.Module):

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)


def test_layer_bits_weight_only_wins_over_global_bits():
    # a benchmark that sets w_bits/a_bits keeps the allocated weight bits;
    # activations follow a_bits
    q = ModelQuantizer(w_bits=3, a_bits=3, first_last_bits=8,
                       layer_bits={'conv2': 6, 'conv3': (5, 7)})
    plan = q.plan(Net())
    assert plan == {'conv1': (8, 8), 'conv2': (6, 3), 'conv3': (5, 7),
                    'fc': (8, 8)}
    with pytest.raises(ValueError, match='expected w_bits'):
        ModelQuantizer(layer_bits={'conv2': 'six'})
    with pytest.raises(ValueError, match='Unsupported w_bits'):
        ModelQuantizer(layer_bits={'conv2': 9})


def test_pinned_layers_and_model_size():
    cfg = dict(first_last_bits=8,
               overrides=[dict(pattern='conv3', w_bits=6),
                          dict(pattern='conv2', a_bits=8)],
               layer_bits={'conv2': 2}, skip=[])
    assert pinned_layers(cfg, Net()) == {'conv1': 8, 'conv3': 6, 'fc': 8}
    model = ModelQuantizer(w_bits=4, a_bits=4, skip=['conv3'],
                           layer_bits={'conv2': 3}).quantize(Net())
    size = weight_size_bits(model)
    assert size["quantized_bits"] == 3 * 8 * 9 * 4 + 8 * 8 * 9 * 3 + 32 * 4
    assert size['float_weights'] == 64
    assert size['total_bits'] == size['quantized_bits'] + 64 * 32


# ----------------------------------------------------------------------
# the command-line tool and the checkpoint

TINY_BASE = """_base_ = '{base}'
model = dict(
    fp_checkpoint='{ckpt}',
    architecture=dict(backbone=dict(stem_channels=8, base_channels=8),
                      head=dict(in_channels=64)),
    generator=dict(base_channels=16, latent_dim=16),
    quantizer=dict(first_last_bits=8))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4, num_batches=1,
                     num_probes=2)),
]
"""


def run_tool(args):
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, 'tools/allocate_bits.py'] + args,
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory, tiny_fp_checkpoint):
    tmp = tmp_path_factory.mktemp('alloc')
    base = tmp / 'tiny_ddaq.py'
    base.write_text(TINY_BASE.format(base=DDAQ_CONFIG,
                                     ckpt=tiny_fp_checkpoint))
    return tmp, str(base)


@pytest.fixture(scope='module')
def mixed_config(tiny_config):
    tmp, base = tiny_config
    out = tmp / 'mixed' / 'tiny_mixed.py'
    proc = run_tool([base, '--avg-w-bits', '3.5', '--out', str(out),
                     '--plot', str(tmp / 'bits.png')])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return base, out, proc


def build_ddaq(cfg):
    init_default_scope('mmpretrain')
    return MODELS.build(cfg.model)


def test_cli_writes_a_config_that_loads_and_builds(mixed_config):
    base, out, proc = mixed_config
    text = out.read_text()
    assert 'Budget: 3.5 bits/weight' in text and 'Achieved:' in text
    assert "_base_ = ['../tiny_ddaq.py']" in text
    assert (out.parent.parent / 'bits.png').stat().st_size > 0
    cfg = Config.fromfile(str(out))
    layer_bits = cfg.model.quantizer.layer_bits
    model = build_ddaq(cfg)
    numels, bits = {}, {}
    for name, m in quantized_layers(model.quantized):
        numels[name] = m.weight.numel()
        bits[name] = m.w_bits
        assert m.a_bits == (8 if name not in layer_bits else 4)
    # the first and last layers are pinned at 8 bits by the base config and
    # are not part of the allocation
    first, last = list(bits)[0], list(bits)[-1]
    assert first not in layer_bits and last not in layer_bits
    assert bits[first] == bits[last] == 8
    assert set(layer_bits) == set(bits) - {first, last}
    assert all(bits[n] == b for n, b in layer_bits.items())
    assert average_bits(dict(layer_bits), numels) <= 3.5
    assert len(set(layer_bits.values())) > 1
    # a benchmark overriding the global bits keeps the allocation
    cfg.merge_from_dict({'model.quantizer.w_bits': 4,
                         'model.quantizer.a_bits': 3})
    plan = MODELS.build(cfg.model.quantizer).plan(model.fp_model)
    assert all(plan[n] == (b, 3) for n, b in layer_bits.items())


def test_cli_refuses_to_overwrite_and_rejects_bad_budgets(mixed_config,
                                                          tmp_path):
    base, out, _ = mixed_config
    before = out.read_text()
    proc = run_tool([base, '--avg-w-bits', '3', '--out', str(out)])
    assert proc.returncode != 0
    assert '--overwrite' in proc.stderr
    assert out.read_text() == before
    # --overwrite replaces; --checkpoint other weights goes into the config
    copy = tmp_path / 'copy.py'
    copy.write_text('# mine\n')
    ckpt = tmp_path / 'other_fp.pth'
    shutil.copy(Config.fromfile(base).model.fp_checkpoint, ckpt)
    proc = run_tool([base, '--avg-w-bits', '3', '--out', str(copy),
                     '--overwrite', '--checkpoint', str(ckpt)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'Budget: 3 bits/weight' in copy.read_text()
    assert Config.fromfile(str(copy)).model.fp_checkpoint == str(ckpt)
    bad = tmp_path / 'never.py'
    proc = run_tool([base, '--avg-w-bits', '1.5', '--out', str(bad)])
    assert proc.returncode != 0
    assert 'below the smallest candidate' in proc.stderr
    assert not bad.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.alloc')]


def test_checkpoint_records_layer_bits(mixed_config, tmp_path):
    _, out, _ = mixed_config
    cfg = Config.fromfile(str(out))
    model = build_ddaq(cfg)
    path = tmp_path / 'mixed.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    ckpt = load_checkpoint_safe(str(path), map_location='cpu')
    saved = ckpt['state_dict']['_extra_state']['layer_bits']
    assert saved == {n: [m.w_bits, m.a_bits]
                     for n, m in quantized_layers(model.quantized)}
    for name, b in cfg.model.quantizer.layer_bits.items():
        assert saved[name][0] == b
    # loading it into a model with other bits says so
    cfg.model.quantizer.layer_bits = {}
    uniform = build_ddaq(cfg)
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        uniform.load_state_dict(ckpt['state_dict'])
    finally:
        logger.removeHandler(handler)
    assert any('other bit-widths' in r.getMessage() for r in records)
