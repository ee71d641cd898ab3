"""Sample sources: where the inputs of a method come from.

Every source returns inputs in the model's normalised input space, in two
ways:

- called, ``source(algorithm, num_samples, batch_size)``, it returns a pool
  of batches (post-training calibration and reconstruction);
- sources that can feed the training loop also have ``draw(algorithm,
  batch_size)``, which returns one batch and its generator labels (or
  None): the algorithm's ``sample_source`` (the generator of DDAQ and
  GDFQ, Gaussian noise for PTQ, the distilled pool of ZeroQ, real images
  for QAT).
"""
import math
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.runner import Runner

from mmddaq.registry import SAMPLE_SOURCES

#: The names ``DDAQ(sample_source=...)`` accepts for the sources below.
SOURCE_NAMES = dict(generator='mmddaq.GeneratorSamples',
                    gaussian='mmddaq.GaussianSamples',
                    pool='mmddaq.PoolSamples')


def build_input_source(source: Union[str, dict]):
    """Build the source that feeds a training loop one batch at a time.

    Args:
        source (str | dict): A name of :data:`SOURCE_NAMES` or a sample
            source config with a ``draw`` method.

    Returns:
        The sample source.
    """
    if isinstance(source, str):
        if source not in SOURCE_NAMES:
            raise ValueError(f'unknown sample_source "{source}"; choose '
                             f'from {", ".join(SOURCE_NAMES)} or give a '
                             'sample source config')
        source = dict(type=SOURCE_NAMES[source])
    if not isinstance(source, dict) or 'type' not in source:
        raise TypeError('sample_source must be a name or a config dict with '
                        f'a "type", got {source!r}')
    built = SAMPLE_SOURCES.build(source)
    if not callable(getattr(built, 'draw', None)):
        raise TypeError(f'{type(built).__name__} makes pools only and '
                        'cannot feed the training loop (it has no draw)')
    return built


def _pool(draw: Callable[[int], torch.Tensor], num_samples: int,
          batch_size: int) -> List[torch.Tensor]:
    """``num_samples`` inputs from ``draw(n)`` in batches of
    ``batch_size``."""
    return [
        draw(min(batch_size, num_samples - start)).detach()
        for start in range(0, num_samples, batch_size)
    ]


class _DrawnPool:
    """A source whose pool is ``num_samples`` inputs of its own ``draw``."""

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        return _pool(lambda n: self.draw(algorithm, n)[0], num_samples,
                     batch_size)


@SAMPLE_SOURCES.register_module()
class AlgorithmSamples:
    """Batches from the algorithm's own sample source.

    That is, whatever the :class:`~mmddaq.models.DDAQ` model's
    ``sample_source`` draws: its trained generator, Gaussian noise, the
    distilled pool or real images.

    Args:
        generator_mode (str, optional): ``'train'``: the generator draws
            with batch statistics in its BN layers, as during training
            (its running statistics are left as they were); ``'eval'``:
            with its running statistics; ``None`` (default): in whatever
            mode the algorithm is (``PostTrainingHook`` puts it in eval
            mode).
    """

    def __init__(self, generator_mode: Optional[str] = None) -> None:
        if generator_mode not in (None, 'train', 'eval'):
            raise ValueError('generator_mode must be None, "train" or '
                             f'"eval", got {generator_mode!r}')
        self.generator_mode = generator_mode

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        generator = getattr(algorithm, 'generator', None)
        if self.generator_mode is None or generator is None:
            return self._draw(algorithm, num_samples, batch_size)
        training = generator.training
        kept = {k: v.clone() for k, v in generator.state_dict().items()
                if 'running_' in k or k.endswith('num_batches_tracked')}
        generator.train(self.generator_mode == 'train')
        try:
            return self._draw(algorithm, num_samples, batch_size)
        finally:
            generator.train(training)
            generator.load_state_dict(kept, strict=False)

    @staticmethod
    def _draw(algorithm, num_samples: int,
              batch_size: int) -> List[torch.Tensor]:
        return _pool(lambda n: algorithm.sample_inputs(n)[0], num_samples,
                     batch_size)


@SAMPLE_SOURCES.register_module()
class GeneratorSamples(_DrawnPool):
    """The algorithm's generator (DDAQ, GDFQ-style, Genie-style).

    ``draw`` keeps the graph to the generator when autograd is on (the
    generator's update); pools are drawn without it.
    """

    needs_generator = True

    def draw(self, algorithm, batch_size: int) -> Tuple[torch.Tensor, Any]:
        generator = getattr(algorithm, 'generator', None)
        if generator is None:
            raise RuntimeError('GeneratorSamples: the algorithm has no '
                               'generator')
        z, labels = generator.sample_noise(batch_size, algorithm.device_of())
        return generator(z, labels), labels


@SAMPLE_SOURCES.register_module()
class GaussianSamples(_DrawnPool):
    """Standard normal noise in the normalised input space (naive PTQ)."""

    def draw(self, algorithm, batch_size: int) -> Tuple[torch.Tensor, None]:
        return torch.randn(batch_size, *algorithm.input_shape,
                           device=algorithm.device_of()), None


@SAMPLE_SOURCES.register_module()
class PoolSamples(_DrawnPool):
    """Random draws from the algorithm's fixed ``sample_pool`` (ZeroQ-style:
    inputs distilled from BN statistics by :class:`DistilledSamplesHook`).
    """

    def draw(self, algorithm, batch_size: int) -> Tuple[torch.Tensor, None]:
        pool = algorithm.sample_pool
        if pool.numel() == 0:
            raise RuntimeError(
                'the sample source is the distilled pool but the pool is '
                'empty: add DistilledSamplesHook to custom_hooks.')
        idx = torch.randint(0, len(pool), (batch_size, ))
        return pool[idx.to(pool.device)], None


@SAMPLE_SOURCES.register_module()
class RealSamples:
    """Real images from a dataloader config (not data-free: an upper bound).

    As a pool, the first ``num_samples`` images of one pass. As the
    training loop's source (``DDAQ(sample_source=dict(type=
    'mmddaq.RealSamples', dataloader=...))``: QAT with KD), ``draw``
    returns the next ``batch_size`` images, preprocessed in training mode,
    going through the dataloader again (next sampler epoch) when it ends;
    the dataloader's own batch size only sets how many images are read at
    a time. Images of two loader batches are joined, so they must have one
    size (classifiers; a detector's padded batches differ). The stream's
    position is not checkpointed: a resumed QAT run starts a new pass.

    Args:
        dataloader (dict): An MMEngine dataloader config (a pool: e.g. the
            model's training split without augmentation; QAT: with it).
        strict (bool): Raise when the dataloader holds fewer images than
            asked for; otherwise return those it has. Defaults to True.
        seed (int): Seed of the dataloader's sampler (fixed, so every rank
            builds it without a collective). Defaults to 0.
    """

    def __init__(self, dataloader: dict, strict: bool = True,
                 seed: int = 0) -> None:
        self.dataloader = dataloader
        self.strict = strict
        self.seed = int(seed)
        self._loader = None
        self._batches = None
        self._passes = 0
        self._left: Optional[torch.Tensor] = None

    def __getstate__(self) -> dict:
        # a dataloader iterator cannot be copied or pickled: a copy starts
        # its own stream
        state = dict(self.__dict__)
        state.update(_loader=None, _batches=None, _passes=0, _left=None)
        return state

    def _next_inputs(self, algorithm) -> torch.Tensor:
        if self._loader is None:
            self._loader = Runner.build_dataloader(self.dataloader,
                                                   seed=self.seed)
        for _ in range(2):  # at most one restart: an empty loader is an error
            if self._batches is not None:
                data = next(self._batches, None)
                if data is not None:
                    return algorithm.data_preprocessor(data, True)['inputs']
            sampler = getattr(self._loader, 'sampler', None)
            if hasattr(sampler, 'set_epoch'):
                sampler.set_epoch(self._passes)
            self._passes += 1
            self._batches = iter(self._loader)
        raise ValueError('RealSamples: the dataloader yields no images')

    def draw(self, algorithm, batch_size: int) -> Tuple[torch.Tensor, None]:
        parts = [] if self._left is None else [self._left]
        count = sum(len(p) for p in parts)
        while count < batch_size:
            x = self._next_inputs(algorithm)
            parts.append(x)
            count += len(x)
        x = torch.cat(parts)
        self._left = x[batch_size:] if count > batch_size else None
        return x[:batch_size], None

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        loader = Runner.build_dataloader(self.dataloader)
        inputs, count = [], 0
        for data in loader:
            x = algorithm.data_preprocessor(data, False)['inputs']
            inputs.append(x)
            count += len(x)
            if count >= num_samples:
                break
        if count < num_samples and self.strict:
            raise ValueError(f'the dataloader holds {count} images, fewer '
                             f'than the {num_samples} asked for')
        pool = torch.cat(inputs)[:num_samples]
        return list(pool.split(batch_size))


@SAMPLE_SOURCES.register_module()
class MixedSamples:
    """A pool drawn from several sample sources, in given proportions.

    E.g. a trained generator's samples next to Gaussian noise: ranges and
    reconstruction see both what the generator learned to draw and inputs
    that cover the whole input space.

    Args:
        sources (list[dict]): Sample source configs.
        fractions (list[float], optional): Share of the pool each source
            draws (normalised to sum 1); equal shares by default.
    """

    def __init__(self, sources: List[dict],
                 fractions: Optional[List[float]] = None) -> None:
        if not sources:
            raise ValueError('MixedSamples needs at least one source')
        fractions = [1.] * len(sources) if fractions is None \
            else [float(f) for f in fractions]
        if len(fractions) != len(sources) or min(fractions) < 0 or \
                sum(fractions) <= 0:
            raise ValueError('fractions must be one non-negative number per '
                             f'source, not all zero; got {fractions}')
        self.sources = [SAMPLE_SOURCES.build(s) for s in sources]
        total = sum(fractions)
        self.fractions = [f / total for f in fractions]

    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        counts = [int(f * num_samples) for f in self.fractions[:-1]]
        counts.append(num_samples - sum(counts))
        batches = []
        for source, count in zip(self.sources, counts):
            if count > 0:
                batches += source(algorithm, count, batch_size)
        return batches


@SAMPLE_SOURCES.register_module()
class HardestSamples:
    """The samples of another source on which the quantized model is most
    wrong: D2 as a selection rule.

    ``oversample * num_samples`` inputs are drawn from ``source``; each is
    scored by the algorithm's per-sample FP-vs-quantized discrepancy
    (``per_sample_discrepancy``, the D2 taps and their importance weights)
    and the ``num_samples`` highest scores are kept.

    Args:
        source (dict): The sample source to draw from.
        oversample (float): Inputs drawn per input kept (>= 1). Defaults
            to 4.
    """

    def __init__(self, source: dict = dict(type='mmddaq.AlgorithmSamples'),
                 oversample: float = 4.) -> None:
        if float(oversample) < 1:
            raise ValueError(f'oversample must be >= 1, got {oversample}')
        self.source = SAMPLE_SOURCES.build(source)
        self.oversample = float(oversample)

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        if not hasattr(algorithm, 'per_sample_discrepancy'):
            raise TypeError(f'{type(algorithm).__name__} has no '
                            'per_sample_discrepancy: HardestSamples needs the '
                            'DDAQ algorithm')
        drawn = max(num_samples, int(round(self.oversample * num_samples)))
        pool = torch.cat(self.source(algorithm, drawn, batch_size))
        scores = torch.cat([
            algorithm.per_sample_discrepancy(b)
            for b in pool.split(batch_size)
        ])
        keep = scores.topk(num_samples).indices.sort().values
        return list(pool[keep].split(batch_size))


@SAMPLE_SOURCES.register_module()
class AugmentedSamples:
    """Another source's samples, each flipped and rescaled at random.

    A generator draws its objects at the positions and sizes it settled
    on; a random horizontal flip and a random zoom (in: a crop of the
    sample scaled up; out: the sample scaled down and placed at a random
    position on a canvas of zeros, the normalised input's mean) show the
    refined layers the same content at other positions and scales.

    Args:
        source (dict): The sample source to draw from.
        flip (float): Probability of a horizontal flip. Defaults to 0.5.
        scale (tuple[float, float]): Range of the zoom factor, drawn
            log-uniformly per sample; 1 keeps the size. Defaults to
            ``(0.5, 1.5)``.
    """

    def __init__(self, source: dict = dict(type='mmddaq.AlgorithmSamples'),
                 flip: float = 0.5,
                 scale: Tuple[float, float] = (0.5, 1.5)) -> None:
        if not 0. <= float(flip) <= 1.:
            raise ValueError(f'flip must be a probability, got {flip}')
        lo, hi = (float(s) for s in scale)
        if not 0. < lo <= hi:
            raise ValueError(f'scale must be (low, high) with 0 < low <= '
                             f'high, got {scale}')
        self.source = SAMPLE_SOURCES.build(source)
        self.flip = float(flip)
        self.scale = (lo, hi)

    @torch.no_grad()
    def __call__(self, algorithm, num_samples: int,
                 batch_size: int) -> List[torch.Tensor]:
        return [
            torch.stack([self.augment(x) for x in batch])
            for batch in self.source(algorithm, num_samples, batch_size)
        ]

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """One ``(C, H, W)`` sample flipped and zoomed at random."""
        if float(torch.rand(())) < self.flip:
            x = x.flip(-1)
        lo, hi = math.log(self.scale[0]), math.log(self.scale[1])
        s = math.exp(lo + (hi - lo) * float(torch.rand(())))
        h, w = x.shape[-2:]
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        if (sh, sw) == (h, w):
            return x
        y = F.interpolate(x[None], size=(sh, sw), mode='bilinear',
                          align_corners=False)[0]
        out = x.new_zeros(x.shape)
        # where the scaled sample and the canvas overlap, at a random offset
        dy = int(torch.randint(abs(sh - h) + 1, ()))
        dx = int(torch.randint(abs(sw - w) + 1, ()))
        ys, yo = (slice(dy, dy + h), slice(0, h)) if sh >= h else \
            (slice(0, sh), slice(dy, dy + sh))
        xs, xo = (slice(dx, dx + w), slice(0, w)) if sw >= w else \
            (slice(0, sw), slice(dx, dx + sw))
        out[:, yo, xo] = y[:, ys, xs]
        return out
