"""A Runner that accepts training without a train dataloader."""
from mmengine.runner import Runner

from mmddaq.registry import RUNNERS


@RUNNERS.register_module()
class DataFreeRunner(Runner):
    """MMEngine ``Runner`` for data-free training.

    MMEngine requires ``train_dataloader``, ``train_cfg`` and
    ``optim_wrapper`` to be given together. Data-free training has no
    dataloader: this runner accepts a missing one when ``train_cfg`` is
    given, and the loop (e.g. :class:`DataFreeTrainLoop`) makes its own
    batches. Select it in a config with ``runner_type='DataFreeRunner'``
    (scope ``mmddaq``). Everything else is MMEngine's Runner.
    """

    def __init__(self, *args, train_dataloader=None, train_cfg=None,
                 **kwargs) -> None:
        if train_dataloader is None and train_cfg is not None:
            train_dataloader = {}
        super().__init__(
            *args,
            train_dataloader=train_dataloader,
            train_cfg=train_cfg,
            **kwargs)

    @classmethod
    def from_cfg(cls, cfg) -> 'DataFreeRunner':
        cfg = cfg.copy()
        if cfg.get('train_dataloader') is None and cfg.get('train_cfg'):
            cfg['train_dataloader'] = {}
        return super().from_cfg(cfg)
