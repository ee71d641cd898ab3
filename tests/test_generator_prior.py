"""The detection prior and the diversity term of the generator."""
import pytest
import torch

from mmddaq.losses import (dense_class_prior, pairwise_diversity_loss,
                           roi_class_prior)
from test_detection import build


class _Algorithm:
    """What a sample source reads from the algorithm."""
    input_shape = (3, 8, 8)

    def device_of(self):
        return torch.device('cpu')

    def sample_inputs(self, n):
        return torch.full((n, *self.input_shape), 7.), None


def test_mixed_samples_draw_each_source_in_proportion():
    from mmddaq.registry import SAMPLE_SOURCES
    source = SAMPLE_SOURCES.build(dict(
        type='mmddaq.MixedSamples',
        sources=[dict(type='mmddaq.AlgorithmSamples'),
                 dict(type='mmddaq.GaussianSamples')],
        fractions=[3, 1]))
    pool = torch.cat(source(_Algorithm(), 10, 4))
    assert pool.shape == (10, 3, 8, 8)
    from_algorithm = (pool == 7.).flatten(1).all(1)
    assert int(from_algorithm.sum()) == 7  # floor(0.75 * 10); noise the rest
    with pytest.raises(ValueError, match='fractions'):
        SAMPLE_SOURCES.build(dict(type='mmddaq.MixedSamples',
                                  sources=[dict(type='mmddaq.GaussianSamples')],
                                  fractions=[1, 1]))


class _Scored(_Algorithm):
    """Draws Gaussian inputs; a sample's discrepancy is its mean."""

    def per_sample_discrepancy(self, x):
        return x.flatten(1).mean(1)


def test_hardest_samples_keep_the_highest_discrepancies():
    from mmddaq.registry import SAMPLE_SOURCES
    source = SAMPLE_SOURCES.build(dict(
        type='mmddaq.HardestSamples',
        source=dict(type='mmddaq.GaussianSamples'), oversample=4))
    torch.manual_seed(0)
    kept = torch.cat(source(_Scored(), 5, 2))
    torch.manual_seed(0)
    drawn = torch.cat(SAMPLE_SOURCES.build(
        dict(type='mmddaq.GaussianSamples'))(_Scored(), 20, 2))
    assert kept.shape == (5, 3, 8, 8)
    top = drawn[drawn.flatten(1).mean(1).topk(5).indices]
    assert sorted(kept.flatten(1).mean(1).tolist()) == \
        sorted(top.flatten(1).mean(1).tolist())
    with pytest.raises(ValueError, match='oversample'):
        SAMPLE_SOURCES.build(dict(type='mmddaq.HardestSamples', oversample=0.5))
    with pytest.raises(TypeError, match='per_sample_discrepancy'):
        source(_Algorithm(), 5, 2)


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_per_sample_discrepancy_scores_each_image_alone(kind, tmp_path):
    model, optim = build(kind, tmp_path)
    # ranges from one generated batch, then frozen
    model.train_step(dict(batch_size=2, update_generator=False,
                          update_quantized=False), optim)
    from mmddaq.quantization import freeze_activations
    freeze_activations(model.quantized)
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(3, *model.input_shape)
    scores = model.per_sample_discrepancy(x)
    assert scores.shape == (3, ) and (scores > 0).all()
    # one image's score does not depend on the rest of its batch
    assert model.per_sample_discrepancy(x[1:2])[0] == pytest.approx(
        float(scores[1]), rel=1e-4)
    # far outside the calibrated ranges the quantized model is more wrong
    wild = model.per_sample_discrepancy(torch.cat([x[:1], 30 * x[:1]]))
    assert wild[1] > wild[0]


def _levels(n=2, anchors=3, classes=4, sizes=(8, 4)):
    torch.manual_seed(0)
    return [torch.randn(n, anchors * classes, s, s, requires_grad=True)
            for s in sizes]


def test_dense_prior_raises_the_label_and_nothing_else():
    scores = _levels()
    labels = torch.tensor([1, 3])
    before = [s.detach().clone() for s in scores]
    loss = dense_class_prior(scores, labels, num_classes=4, topk=5)
    loss.backward()
    for s, b in zip(scores, before):
        g = s.grad.reshape(2, 3, 4, *s.shape[-2:])
        # gradient only on each image's own class channel, and it raises it
        for img, label in enumerate(labels.tolist()):
            others = [c for c in range(4) if c != label]
            assert g[img, :, others].abs().sum() == 0
            assert (g[img, :, label] <= 0).all()
    n_touched = sum(int((s.grad != 0).sum()) for s in scores)
    assert n_touched == 2 * 5  # topk anchors per image, over both levels
    # steps along the gradient make the label's best anchors confident
    opt = torch.optim.SGD(scores, lr=5.)
    for _ in range(50):
        opt.zero_grad()
        dense_class_prior(scores, labels, 4, topk=5).backward()
        opt.step()
    assert dense_class_prior(scores, labels, 4, topk=5) < 0.5 * loss.detach()


def test_dense_prior_rejects_bad_input():
    scores = _levels()
    with pytest.raises(ValueError, match='multiple of num_classes'):
        dense_class_prior(scores, torch.tensor([0, 1]), num_classes=5)
    with pytest.raises(ValueError, match='topk'):
        dense_class_prior(scores, torch.tensor([0, 1]), 4, topk=0)
    # a label the detector does not have: the class counts differ
    with pytest.raises(ValueError, match='num_classes must equal'):
        dense_class_prior(scores, torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match='num_classes must equal'):
        roi_class_prior(torch.randn(3, 6), [3], torch.tensor([5]))


def test_roi_prior_uses_each_images_own_rois():
    torch.manual_seed(0)
    logits = torch.randn(7, 6, requires_grad=True)  # 5 classes + bg
    labels = torch.tensor([2, 4])
    loss = roi_class_prior(logits, [3, 4], labels, topk=2)
    loss.backward()
    grad = logits.grad
    # image 0 owns rows 0-2, image 1 rows 3-6; 2 RoIs each receive gradient
    assert int((grad[:3].abs().sum(1) > 0).sum()) == 2
    assert int((grad[3:].abs().sum(1) > 0).sum()) == 2
    # their label's logit goes up
    assert (grad[:3, 2] <= 0).all() and (grad[3:, 4] <= 0).all()
    empty = torch.zeros(0, 6, requires_grad=True)
    assert float(roi_class_prior(empty, [0, 0], labels).detach()) == 0.


def test_diversity_loss_is_largest_for_a_collapsed_batch():
    torch.manual_seed(0)
    diverse = torch.randn(6, 3, 8, 8)
    collapsed = diverse[:1].repeat(6, 1, 1, 1) + \
        1e-3 * torch.randn(6, 3, 8, 8)
    assert pairwise_diversity_loss(collapsed) > \
        pairwise_diversity_loss(diverse) + 3
    # scale-free: a feature 1000x larger counts the same
    a = pairwise_diversity_loss([diverse, diverse[:, :1]])
    b = pairwise_diversity_loss([diverse, 1000 * diverse[:, :1]])
    assert torch.allclose(a, b, rtol=1e-4)
    # gradient descent moves collapsed samples apart
    x = collapsed.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.01)
    start = float(pairwise_diversity_loss(x))
    for _ in range(20):
        opt.zero_grad()
        pairwise_diversity_loss(x).backward()
        opt.step()
    assert float(pairwise_diversity_loss(x)) < start - 1
    assert float(pairwise_diversity_loss(diverse[:1])) == 0.
    with pytest.raises(ValueError, match='one row per sample'):
        pairwise_diversity_loss([diverse, torch.randn(7, 4)])


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_conditional_generator_with_prior_and_diversity(kind, tmp_path):
    model, optim = build(
        kind, tmp_path,
        loss_weights=dict(ce=1., bns=1., div=0.5, dis=1.),
        generator=dict(type='mmddaq.Generator', img_size=64, latent_dim=16,
                       base_channels=16, num_upsamples=3, num_classes=5))
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    log = model.train_step(
        dict(batch_size=4, update_generator=True, update_quantized=False),
        optim)
    assert {'loss_ce', 'loss_div', 'loss_bns', 'loss_g'} <= set(log)
    assert all(torch.isfinite(v) for v in log.values())
    changed = [k for k, v in model.generator.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith('label_emb') for k in changed)


@pytest.mark.parametrize('kind', ['retinanet', 'faster_rcnn'])
def test_the_prior_alone_trains_the_generator_towards_its_labels(
        kind, tmp_path):
    # no D1, no D2, no diversity: any generator update comes from the prior
    model, optim = build(
        kind, tmp_path, loss_weights=dict(ce=1., bns=0., dis=0., q_dis=0.),
        generator=dict(type='mmddaq.Generator', img_size=64, latent_dim=16,
                       base_channels=16, num_upsamples=3, num_classes=5))
    plan = dict(batch_size=4, update_generator=True, update_quantized=False)
    torch.manual_seed(1)
    z, labels = model.generator.sample_noise(8)

    def prior():
        with torch.no_grad():
            x = model.generator(z, labels)
            return float(model.adapter.task_loss(
                model.adapter.forward(model.fp_model, x), labels))

    start = prior()
    for _ in range(15):
        log = model.train_step(plan, optim)
        assert set(log) == {'loss_ce', 'loss_g'}
    assert prior() < start


def test_generator_classes_must_be_the_detectors(tmp_path):
    with pytest.raises(ValueError, match='num_classes=5'):
        build('retinanet', tmp_path,
              generator=dict(type='mmddaq.Generator', img_size=64,
                             latent_dim=16, base_channels=16,
                             num_upsamples=3, num_classes=3))


def test_post_training_calibrates_on_its_own_sample_source(tmp_path,
                                                           monkeypatch):
    """Ranges from ``calibration_samples``, the pool for the rest."""
    from types import SimpleNamespace

    from mmengine.logging import MessageHub, MMLogger

    from mmddaq.engine.hooks import post_training_hook as pth
    from mmddaq.registry import SAMPLE_SOURCES

    @SAMPLE_SOURCES.register_module(name='_SevensForTest', force=True)
    class Sevens:

        def __call__(self, algorithm, num_samples, batch_size):
            return [torch.full((num_samples, *algorithm.input_shape), 7.)]

    model, _ = build('retinanet', tmp_path)
    seen = []
    monkeypatch.setattr(pth, 'recalibrate',
                        lambda q, forward, batches: seen.extend(batches))
    monkeypatch.setattr(pth.PostTrainingHook, '_save', lambda self, r: None)
    hook = pth.PostTrainingHook(
        samples=dict(type='mmddaq.GaussianSamples'), num_samples=2,
        calibration_samples=dict(type='_SevensForTest'))
    hub = MessageHub.get_instance('test_post_training_calibration')
    runner = SimpleNamespace(model=model, message_hub=hub, seed=0,
                             work_dir=str(tmp_path),
                             logger=MMLogger.get_current_instance())
    hook.after_train(runner)
    assert len(seen) == 1 and bool((seen[0] == 7.).all())
    assert hub.get_info('post_training_seconds') > 0
    with pytest.raises(ValueError, match='calibrate=True'):
        pth.PostTrainingHook(calibrate=False,
                             calibration_samples=dict(type='_SevensForTest'))


def test_augmented_samples_flip_and_zoom():
    from mmddaq.registry import SAMPLE_SOURCES

    def build(**kw):
        return SAMPLE_SOURCES.build(dict(
            type='mmddaq.AugmentedSamples',
            source=dict(type='mmddaq.GaussianSamples'), **kw))

    def draw(source, seed=0):
        torch.manual_seed(seed)
        return torch.cat(source(_Algorithm(), 4, 2))

    torch.manual_seed(0)
    plain = torch.cat(SAMPLE_SOURCES.build(
        dict(type='mmddaq.GaussianSamples'))(_Algorithm(), 4, 2))
    flipped = draw(build(flip=1., scale=(1., 1.)))
    assert torch.equal(flipped, plain.flip(-1))
    assert torch.equal(draw(build(flip=0., scale=(1., 1.))), plain)
    # zoomed out by 2: a 4x4 picture somewhere on a zero 8x8 canvas
    aug = build(flip=0., scale=(0.5, 0.5))
    x = torch.rand(3, 8, 8) + 1.
    out = aug.augment(x)
    assert out.shape == x.shape
    assert int((out[0] != 0).sum()) == 16
    rows, cols = (out[0] != 0).nonzero().unbind(1)
    assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 3
    # zoomed in by 2: a crop of the upscaled picture fills the canvas
    out = build(flip=0., scale=(2., 2.)).augment(x)
    assert bool((out != 0).all())
    assert out.min() >= x.min() - 1e-5 and out.max() <= x.max() + 1e-5
    for bad in (dict(flip=1.5), dict(scale=(0., 1.)), dict(scale=(2., 1.))):
        with pytest.raises(ValueError):
            build(**bad)


def test_algorithm_samples_in_the_generators_train_or_eval_mode():
    from types import SimpleNamespace

    from torch import nn

    from mmddaq.registry import SAMPLE_SOURCES
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    gen[1].running_mean.fill_(3.)  # far from any batch's mean
    z = torch.randn(8, 4)
    algo = SimpleNamespace(generator=gen,
                           sample_inputs=lambda n: (gen(z[:n]), None))
    gen.eval()
    kept = {k: v.clone() for k, v in gen.state_dict().items()}

    def draw(mode):
        return SAMPLE_SOURCES.build(dict(type='mmddaq.AlgorithmSamples',
                                         generator_mode=mode))(algo, 8, 4)

    as_trained = draw('train')
    # batch statistics: every batch of 4 is normalised on its own
    assert all(abs(float(b.mean())) < 1e-5 for b in as_trained)
    assert not gen.training  # mode put back
    for k, v in gen.state_dict().items():  # running statistics kept
        assert torch.equal(v, kept[k]), k
    running = draw('eval')
    assert float(running[0].mean()) < -1.  # shifted by the running mean
    assert torch.equal(torch.cat(draw(None)), torch.cat(running))
    with pytest.raises(ValueError, match='generator_mode'):
        SAMPLE_SOURCES.build(dict(type='mmddaq.AlgorithmSamples',
                                  generator_mode='test'))
