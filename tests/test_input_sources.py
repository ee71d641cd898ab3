"""Where each method's inputs come from: sample sources as components."""
import pytest
import torch
from mmengine.registry import MODELS, init_default_scope

from conftest import DDAQ_CONFIG, ROOT, tiny_ddaq_options
from mmddaq.apis import build_runner, load_config
from mmddaq.engine import DataFreeTrainLoop
from mmddaq.generators import (GaussianSamples, GeneratorSamples,
                               PoolSamples, RealSamples, build_input_source)

QAT_CONFIG = f'{ROOT}/configs/baselines/qat_resnet18-w16_digits_w4a4.py'
PLAN = dict(batch_size=8, update_generator=True, update_quantized=True)


def build(fp_checkpoint, config=DDAQ_CONFIG, **model_overrides):
    init_default_scope('mmpretrain')
    opts = {k: v for k, v in tiny_ddaq_options(fp_checkpoint).items()
            if k.startswith('model.')}
    opts.update({f'model.{k}': v for k, v in model_overrides.items()})
    cfg = load_config(config, opts)
    torch.manual_seed(0)
    return MODELS.build(cfg.model)


def test_names_build_the_registered_sources():
    assert isinstance(build_input_source('generator'), GeneratorSamples)
    assert isinstance(build_input_source('gaussian'), GaussianSamples)
    assert isinstance(build_input_source('pool'), PoolSamples)
    with pytest.raises(ValueError, match='unknown sample_source "noise"'):
        build_input_source('noise')
    # a source that only makes pools cannot feed the training loop
    with pytest.raises(TypeError, match='MixedSamples makes pools only'):
        build_input_source(dict(type='mmddaq.MixedSamples',
                                sources=[dict(type='mmddaq.GaussianSamples')]))
    with pytest.raises(TypeError, match='config dict with a "type"'):
        build_input_source(dict(num_samples=3))


def test_a_name_and_its_config_draw_the_same_batches(tiny_fp_checkpoint):
    by_name = build(tiny_fp_checkpoint, sample_source='gaussian',
                    generator=None)
    by_cfg = build(tiny_fp_checkpoint, generator=None,
                   sample_source=dict(type='mmddaq.GaussianSamples'))
    torch.manual_seed(3)
    a, labels = by_name.sample_inputs(5)
    torch.manual_seed(3)
    b, _ = by_cfg.sample_inputs(5)
    assert labels is None and a.shape == (5, 3, 32, 32)
    assert torch.equal(a, b)
    # the generator source keeps the graph to the generator
    model = build(tiny_fp_checkpoint)
    x, labels = model.sample_inputs(4)
    assert x.requires_grad and labels.shape == (4, )
    with pytest.raises(ValueError, match='GeneratorSamples needs a generator'):
        build(tiny_fp_checkpoint, generator=None)


def test_pool_source_draws_from_the_distilled_pool(tiny_fp_checkpoint):
    model = build(tiny_fp_checkpoint, sample_source='pool', generator=None)
    with pytest.raises(RuntimeError, match='add DistilledSamplesHook'):
        model.sample_inputs(2)
    model.sample_pool = torch.arange(6.).view(6, 1, 1, 1).expand(
        6, 3, 32, 32).contiguous()
    x, _ = model.sample_inputs(20)
    assert x.shape == (20, 3, 32, 32)
    assert set(x[:, 0, 0, 0].tolist()) <= set(range(6))


class _Preprocessor:

    def __call__(self, data, training):
        assert training  # the training loop's batches
        return dict(inputs=data)


class _Algorithm:
    data_preprocessor = _Preprocessor()


class _Loader(list):
    """Batches of a fake dataloader whose sampler records its epochs."""

    def __init__(self, batches):
        super().__init__(batches)
        self.sampler = self
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_real_samples_draw_exact_batches_and_go_round(monkeypatch):
    import copy
    images = torch.arange(10.).view(10, 1)
    built = []

    def build_dataloader(cfg, seed=None):
        built.append(seed)
        return _Loader(images.split(3))

    monkeypatch.setattr('mmddaq.generators.sources.Runner.build_dataloader',
                        build_dataloader)
    source = RealSamples(dataloader=dict(), seed=5)
    seen = torch.cat([source.draw(_Algorithm(), 4)[0] for _ in range(5)])
    # batches of exactly 4, in the dataloader's order, cycling after 10
    assert seen.view(-1).tolist() == [float(i % 10) for i in range(20)]
    # built once, with the fixed seed; a new sampler epoch for every pass
    assert built == [5] and source._loader.epochs == [0, 1]
    # a copy (e.g. of the whole model) starts its own stream
    twin = copy.deepcopy(source)
    assert twin.draw(_Algorithm(), 2)[0].view(-1).tolist() == [0., 1.]
    assert source.draw(_Algorithm(), 2)[0].view(-1).tolist() == [0., 1.]
    monkeypatch.setattr('mmddaq.generators.sources.Runner.build_dataloader',
                        lambda cfg, seed=None: [])
    with pytest.raises(ValueError, match='yields no images'):
        RealSamples(dataloader=dict()).draw(_Algorithm(), 2)


def test_train_step_takes_only_step_plans(tiny_fp_checkpoint):
    model = build(tiny_fp_checkpoint)
    with pytest.raises(TypeError, match='takes a step plan'):
        model.train_step(dict(inputs=[torch.zeros(3, 32, 32)]), None)


def test_loop_refuses_a_train_dataloader():
    from torch.utils.data import DataLoader
    for loader in (dict(batch_size=4, dataset=dict()), DataLoader([])):
        with pytest.raises(ValueError, match='set `train_dataloader = None`'):
            DataFreeTrainLoop(object(), max_iters=2, dataloader=loader)
    # what the runner passes for `train_dataloader = None`
    assert DataFreeTrainLoop(object(), max_iters=2, dataloader={}).max_iters


def test_qat_is_the_same_loop_with_real_images(tiny_fp_checkpoint, tmp_path):
    """The QAT baseline: real digits through the data-free loop, KD only."""
    opts = tiny_ddaq_options(tiny_fp_checkpoint, max_iters=3, calib=1)
    opts.pop('model.generator.base_channels')
    opts.pop('model.generator.latent_dim')
    opts['custom_hooks'] = [
        dict(type='mmddaq.ActivationCalibrationHook', calib_iters=1)]
    opts['default_hooks.checkpoint.interval'] = 3
    cfg = load_config(QAT_CONFIG, opts)
    assert cfg.train_dataloader is None
    runner = build_runner(cfg, str(tmp_path / 'qat'), 'qat')
    model = runner.model
    source = model.input_source
    assert isinstance(source, RealSamples) and model.generator is None
    before = {k: v.clone() for k, v in model.quantized.state_dict().items()
              if k.endswith('conv1.weight')}
    runner.train()
    # real digits were drawn (not noise) and KD moved the quantized weights
    assert source._loader is not None
    after = model.quantized.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    assert (tmp_path / 'qat' / 'iter_3.pth').is_file()


def test_zeroq_pool_is_distilled_from_bn_statistics(tiny_fp_checkpoint):
    """ZeroQ-style: DistilledSamplesHook fills the pool the source draws."""
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from mmddaq.engine.hooks import DistilledSamplesHook
    from mmddaq.losses import BNStatisticsLoss
    model = build(tiny_fp_checkpoint, sample_source='pool', generator=None)
    runner = SimpleNamespace(model=model,
                             logger=MMLogger.get_instance('zeroq-test'))
    torch.manual_seed(0)
    DistilledSamplesHook(num_samples=8, iters=30, lr=0.1,
                         batch_size=8).before_train(runner)
    assert model.sample_pool.shape == (8, 3, 32, 32)
    d1 = BNStatisticsLoss(model.fp_model)

    def d1_of(x):
        with torch.no_grad(), d1.recording():
            model.fp_model(x, mode='tensor')
        return float(d1())

    # the distilled inputs match the BN statistics better than the noise
    # they started from (the hook's first draw after the seed)
    torch.manual_seed(0)
    start = torch.randn(8, 3, 32, 32)
    assert d1_of(model.sample_pool) < 0.95 * d1_of(start)
    x, _ = model.sample_inputs(4)
    assert all(any(torch.equal(a, b) for b in model.sample_pool) for a in x)
