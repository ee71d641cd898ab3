"""Data-parallel training of the DDAQ algorithm."""
from typing import Dict, List, Sequence, Union

import torch
import torch.distributed as torch_dist
from mmengine.optim import OptimWrapperDict
from torch import nn

from mmddaq.registry import MODEL_WRAPPERS
from mmddaq.utils.dist import all_reduce_mean_, broadcast_, world_size


@MODEL_WRAPPERS.register_module()
class DDAQDataParallel(nn.Module):
    """Train a :class:`DDAQ` algorithm data-parallel across processes.

    The mmddaq configs select it (``model_wrapper_cfg``) for distributed
    runs (``tools/dist_train.sh``, ``--launcher pytorch/slurm``).
    MMEngine's ``MMDistributedDataParallel`` cannot be used: DDAQ's
    ``train_step`` calls its sub-modules itself and backpropagates twice
    through one forward of the quantized model (the generator's loss
    reaches the generator through it), which DDP's reducer does not
    support. Instead this wrapper keeps the ranks identical explicitly:

    - at construction every parameter and buffer is broadcast from rank 0;
    - in :meth:`train_step` it hands the algorithm ``before_step``, which
      averages the gradients of exactly the parameters about to be updated
      after all backward passes of the iteration and before gradient
      clipping and the optimizer steps. Parameters that are not updated in
      an iteration (the generator outside ``generator_interval``, the
      quantized model during warm-up) take no part, so nothing like
      ``find_unused_parameters`` is needed;
    - after each step the generator's floating-point buffers (BatchNorm
      running statistics; the generator is the only sub-module in train
      mode, the FP and quantized models keep theirs frozen) are averaged.

    Activation ranges are made identical by
    :class:`ActivationCalibrationHook` (min/max over all ranks' batches) and
    layer importance by :class:`LayerImportanceHook` (rank 0, broadcast).
    Per rank: the noise (configs set ``randomness.diff_rank_seed``, so the
    global batch is ``world_size * batch_size`` distinct samples), the
    BN-statistics loss D1 (on the local batch) and the logged losses.

    Args:
        module (nn.Module): The algorithm; its ``train_step`` must accept
            a ``before_step`` callable (as :class:`DDAQ` does).
        bucket_cap_mb (float): Size of the coalesced gradient all-reduces.
            Defaults to 25.
        sync_buffers (bool): Average the generator's buffers after every
            step. Defaults to True.
    """

    def __init__(self,
                 module: nn.Module,
                 bucket_cap_mb: float = 25.,
                 sync_buffers: bool = True) -> None:
        super().__init__()
        if bucket_cap_mb <= 0:
            raise ValueError(
                f'bucket_cap_mb must be > 0, got {bucket_cap_mb}')
        self.module = module
        self.bucket_cap_mb = bucket_cap_mb
        self.sync_buffers = sync_buffers
        broadcast_(
            list(module.parameters()) + list(module.buffers()),
            cap_mb=bucket_cap_mb)

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Replace the gradients of ``params`` by their mean over ranks.

        Parameters without a gradient are skipped; every rank must have
        gradients for the same parameters (they run the same step plan),
        which is checked so that a mismatch fails clearly instead of
        mixing unrelated gradients.
        """
        n = world_size()
        if n == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        count = torch.tensor([len(grads), -len(grads)],
                             device=self._device())
        torch_dist.all_reduce(count, op=torch_dist.ReduceOp.MAX)
        if int(count[0]) != -int(count[1]):
            raise RuntimeError(
                f'ranks disagree on which parameters have gradients (this '
                f'rank: {len(grads)}, others between {-int(count[1])} and '
                f'{int(count[0])}): every rank must run the same step plan.')
        all_reduce_mean_(grads, cap_mb=self.bucket_cap_mb)

    def _device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device('cpu')

    def _sync_generator_buffers(self) -> None:
        generator = getattr(self.module, 'generator', None)
        if generator is None:
            return
        all_reduce_mean_(
            [b for b in generator.buffers() if b.is_floating_point()],
            cap_mb=self.bucket_cap_mb)

    def train_step(self, data: Union[dict, list],
                   optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        """One data-parallel iteration of the wrapped algorithm."""
        log_vars = self.module.train_step(
            data, optim_wrapper, before_step=self.average_gradients)
        if self.sync_buffers:
            self._sync_generator_buffers()
        return log_vars

    def val_step(self, data) -> List:
        """Validation runs on each rank's share of the data."""
        return self.module.val_step(data)

    def test_step(self, data) -> List:
        """Testing runs on each rank's share of the data."""
        return self.module.test_step(data)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
