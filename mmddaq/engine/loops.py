"""The data-free training loop."""
from typing import Optional, Sequence, Union

from mmengine.runner.base_loop import BaseLoop
from torch.utils.data import DataLoader

from mmddaq.registry import LOOPS
from mmddaq.utils.last_checkpoint import resume_hint


class GeneratedBatches:
    """Stand-in for a train dataloader when batches are generated.

    It holds no data; it only tells MMEngine's logging how many
    iterations an "epoch" has and what the batches look like.

    Args:
        batch_size (int): Generated samples per iteration.
        num_iters (int): Iterations of the whole run.
    """

    def __init__(self, batch_size: int, num_iters: int) -> None:
        self.batch_size = batch_size
        self.num_iters = num_iters
        self.dataset = _NoDataset()

    def __len__(self) -> int:
        return self.num_iters


class _NoDataset:
    metainfo: dict = {}

    def __len__(self) -> int:
        return 0


def step_plan(it: int,
              batch_size: int,
              warmup_iters: int = 0,
              generator_interval: int = 1,
              quantized_interval: int = 1) -> dict:
    """The step plan of iteration ``it`` (0-based) of a data-free run.

    Args:
        it (int): The iteration.
        batch_size (int): Generated samples per iteration.
        warmup_iters (int): Iterations that update only the generator.
        generator_interval (int): Update the generator every n iterations.
        quantized_interval (int): Update the quantized model every n
            iterations (after warm-up).

    Returns:
        dict: ``batch_size``, ``update_generator``, ``update_quantized``.
    """
    return dict(
        batch_size=batch_size,
        update_generator=it % generator_interval == 0,
        update_quantized=it >= warmup_iters and it % quantized_interval == 0)


@LOOPS.register_module()
class DataFreeTrainLoop(BaseLoop):
    """Iteration-based training on generated batches (no dataset needed).

    Each iteration hands the model a *step plan* instead of a data batch::

        dict(batch_size=..., update_generator=bool, update_quantized=bool)

    The generator is updated every ``generator_interval`` iterations; the
    quantized model every ``quantized_interval`` iterations once the
    ``warmup_iters`` generator-only iterations are over. The model draws
    the inputs from its sample source (the generator; noise, a distilled
    pool or real images for the baselines), so the loop takes no
    dataloader: a config with a ``train_dataloader`` is refused rather
    than silently trained on real data.

    Args:
        runner (Runner): The runner.
        max_iters (int): Total iterations.
        batch_size (int): Generated samples per iteration. Defaults to 64.
        warmup_iters (int): Iterations that update only the generator.
        generator_interval (int): Update the generator every n iterations.
        quantized_interval (int): Update the quantized model every n
            iterations (after warm-up).
        val_begin (int): First iteration that may run validation.
        val_interval (int): Validate every n iterations.
        dataloader (DataLoader | dict, optional): Must be empty (MMEngine's
            runner passes the config's ``train_dataloader``).
    """

    def __init__(self,
                 runner,
                 max_iters: int,
                 batch_size: int = 64,
                 warmup_iters: int = 0,
                 generator_interval: int = 1,
                 quantized_interval: int = 1,
                 val_begin: int = 1,
                 val_interval: int = 1000,
                 dataloader: Optional[Union[DataLoader, dict]] = None) -> None:
        for name, value in (('max_iters', max_iters),
                            ('batch_size', batch_size),
                            ('generator_interval', generator_interval),
                            ('quantized_interval', quantized_interval),
                            ('val_interval', val_interval)):
            if int(value) < 1:
                raise ValueError(f'{name} must be >= 1, got {value}')
        if warmup_iters < 0 or warmup_iters > max_iters:
            raise ValueError(f'warmup_iters must be in [0, max_iters], '
                             f'got {warmup_iters}')
        if dataloader is not None and not (isinstance(dataloader, dict)
                                           and not dataloader):
            raise ValueError(
                'DataFreeTrainLoop draws every batch from the model\'s sample '
                'source and takes no train_dataloader, but the config has '
                'one (often inherited from a dataset base): set '
                '`train_dataloader = None`. To fine-tune on real images (QAT, '
                'not data-free) give the model sample_source=dict(type='
                '"mmddaq.RealSamples", dataloader=...).')
        self._runner = runner
        self.dataloader = GeneratedBatches(batch_size, max_iters)
        self._max_iters = int(max_iters)
        self._iter = 0
        self._epoch = 0
        self.batch_size = int(batch_size)
        self.warmup_iters = int(warmup_iters)
        self.generator_interval = int(generator_interval)
        self.quantized_interval = int(quantized_interval)
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False

    @property
    def max_epochs(self) -> int:
        return 1

    @property
    def max_iters(self) -> int:
        return self._max_iters

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def iter(self) -> int:
        return self._iter

    def plan(self, it: int) -> dict:
        """Step plan of iteration ``it`` (0-based), see :func:`step_plan`."""
        return step_plan(it, self.batch_size, self.warmup_iters,
                         self.generator_interval, self.quantized_interval)

    def run(self):
        """Run the whole training."""
        self.runner.call_hook('before_train')
        self.runner.call_hook('before_train_epoch')
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            self.run_iter(self.plan(self._iter))
            if (self.runner.val_loop is not None
                    and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_iter(self, data: Union[dict, Sequence]) -> None:
        """One iteration: hooks around the model's ``train_step``."""
        batch_idx = self._iter
        self.runner.call_hook(
            'before_train_iter', batch_idx=batch_idx, data_batch=data)
        try:
            outputs = self.runner.model.train_step(
                data, optim_wrapper=self.runner.optim_wrapper)
        except FloatingPointError as err:
            # nothing of this iteration was saved: say where to resume
            raise FloatingPointError(
                f'Iteration {batch_idx + 1}: {err} '
                f'{resume_hint(self.runner.work_dir)}') from err
        self.runner.call_hook(
            'after_train_iter',
            batch_idx=batch_idx,
            data_batch=data,
            outputs=outputs)
        self._iter += 1
