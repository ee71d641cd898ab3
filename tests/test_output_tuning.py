"""Activation steps tuned against the model's output error
(``mmddaq.OutputTuning``)."""
import copy

import pytest
import torch
from torch.nn import functional as F

from mmddaq.quantization import (OutputTuning, activation_quantizers,
                                 observation_disabled)
from mmddaq.registry import MODELS
from test_reconstruction import _quantize, _trained_tiny_resnet


def mse(fp_out, q_out):
    return F.mse_loss(q_out, fp_out.detach())


def output_error(fp, q, x):
    with torch.no_grad(), observation_disabled(q):
        return float(mse(fp(x), q(x)))


def coarse_model(factor=3.):
    """The tiny ResNet at W8A4 with every activation range ``factor`` times
    too wide: the activation steps decide the output error."""
    fp = _trained_tiny_resnet()
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(4)]
    q = _quantize(copy.deepcopy(fp), 8, batches, a_bits=4)
    with torch.no_grad():
        for a in activation_quantizers(q):
            a.observer.min_val.mul_(factor)
            a.observer.max_val.mul_(factor)
            a._host.pop('qparams', None)
    return fp, q, batches, torch.randn(64, 3, 12, 12, generator=gen)


def test_output_tuning_lowers_the_output_error_and_keeps_the_structure():
    fp, q, batches, x = coarse_model()
    keys = set(q.state_dict())
    weights = {k: v.clone() for k, v in q.state_dict().items()
               if k.endswith('weight')}
    error = output_error(fp, q, x)
    torch.manual_seed(0)
    tuning = MODELS.build(dict(type='mmddaq.OutputTuning', iters=60,
                               act_lr=1e-2, log_interval=0))
    result = tuning(fp, q, lambda m, b: m(b), batches, output_loss=mse)
    assert result['kept'] and result['steps'] == len(
        [a for a in activation_quantizers(q) if a.enabled])
    assert result['loss_after'] < 0.7 * result['loss_before'], result
    # on images it never saw too
    assert output_error(fp, q, x) < 0.7 * error
    # steps baked into the ranges: same keys, nothing left learnable,
    # weights untouched
    assert set(q.state_dict()) == keys
    assert not any(a.learnable for a in activation_quantizers(q))
    for k, v in weights.items():
        assert torch.equal(q.state_dict()[k], v), k
    fresh = _quantize(copy.deepcopy(fp), 8, batches[:1], a_bits=4)
    fresh.load_state_dict(q.state_dict())
    with torch.no_grad(), observation_disabled(q), \
            observation_disabled(fresh):
        assert torch.equal(fresh(x), q(x))


@pytest.mark.parametrize('bias_lr', [None, 1e-2])
def test_output_tuning_that_makes_things_worse_is_put_back(bias_lr):
    fp, q, batches, _ = coarse_model(factor=1.)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    torch.manual_seed(0)
    # a learning rate far too large: the steps jump away from their ranges
    result = OutputTuning(iters=5, act_lr=10., bias_lr=bias_lr,
                          log_interval=0)(fp, q, lambda m, b: m(b), batches,
                                          output_loss=mse)
    assert not result['kept']
    assert result['loss_after'] == result['loss_before']
    assert (result['biases'] > 0) == (bias_lr is not None)
    after = q.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert all(p.grad is None for p in q.parameters())


def test_output_tuning_holds_out_the_last_batches():
    tuning = OutputTuning(holdout=0.25)
    pool = list(range(8))
    assert tuning.split(pool) == (pool[:6], pool[6:])
    assert tuning.split(pool[:2]) == ([0], [1])  # at least one held out
    assert tuning.split(pool[:1]) == ([0], [0])
    assert OutputTuning(holdout=0.).split(pool) == (pool, pool)


def test_output_tuning_refuses_what_it_cannot_tune():
    fp, q, batches, _ = coarse_model(factor=1.)
    with pytest.raises(ValueError, match='output_loss'):
        OutputTuning()(fp, q, lambda m, b: m(b), batches)
    for a in activation_quantizers(q):
        a.calibrate()  # ranges no longer frozen
    with pytest.raises(RuntimeError, match='frozen activation ranges'):
        OutputTuning()(fp, q, lambda m, b: m(b), batches, output_loss=mse)
    for bad in (dict(iters=0), dict(act_lr=0.), dict(bias_lr=-1.),
                dict(holdout=1.)):
        with pytest.raises(ValueError):
            OutputTuning(**bad)


def test_a_failed_tuning_puts_everything_back(monkeypatch):
    fp, q, batches, _ = coarse_model(factor=1.)
    before = {k: v.clone() for k, v in q.state_dict().items()}

    def fail_halfway(self, run, output_loss, fit, steps, biases):
        with torch.no_grad():
            for s in steps:
                s.mul_(2.)
        raise RuntimeError('out of memory')

    monkeypatch.setattr(OutputTuning, '_optimise', fail_halfway)
    with pytest.raises(RuntimeError, match='out of memory'):
        OutputTuning()(fp, q, lambda m, b: m(b), batches, output_loss=mse)
    after = q.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert not any(a.learnable for a in activation_quantizers(q))
