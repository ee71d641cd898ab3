"""A Runner that accepts training without a train dataloader."""
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from mmddaq.registry import RUNNERS
from mmddaq.utils.dist import broadcast_


@RUNNERS.register_module()
class DataFreeRunner(Runner):
    """MMEngine ``Runner`` for data-free training.

    MMEngine requires ``train_dataloader``, ``train_cfg`` and
    ``optim_wrapper`` to be given together. Data-free training has no
    dataloader: this runner accepts a missing one when ``train_cfg`` is
    given, and the loop (e.g. :class:`DataFreeTrainLoop`) makes its own
    batches. Select it in a config with ``runner_type='DataFreeRunner'``
    (scope ``mmddaq``).

    Distributed runs default to data-parallel DDAQ: the model is wrapped in
    :class:`DDAQDataParallel` unless ``model_wrapper_cfg`` names another
    wrapper, and, built from a config, ``randomness.diff_rank_seed``
    defaults to True so that every rank draws its own noise (set it to
    False explicitly for identical noise on all ranks). Everything else is
    MMEngine's Runner.
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
        randomness = dict(cfg.get('randomness') or dict(seed=None))
        randomness.setdefault('diff_rank_seed', True)
        cfg['randomness'] = randomness
        return super().from_cfg(cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        """Wrap in :class:`DDAQDataParallel` when distributed by default."""
        if model_wrapper_cfg is None and self.distributed and \
                not is_model_wrapper(model):
            model_wrapper_cfg = dict(type='mmddaq.DDAQDataParallel')
        return super().wrap_model(model_wrapper_cfg, model)

    def _init_model_weights(self) -> None:
        """Initialise the weights, then give every rank those of rank 0.

        MMEngine broadcasts every ``state_dict`` entry, which fails on
        non-tensor extra state (DDAQ keeps its layer importance there);
        this broadcasts the parameters and buffers only.
        """
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        if hasattr(model, 'init_weights'):
            model.init_weights()
            broadcast_(list(model.parameters()) + list(model.buffers()))
