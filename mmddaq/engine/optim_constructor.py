"""One optimizer wrapper per named submodule (generator, quantized)."""
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapperDict
from mmengine.model import is_model_wrapper

from mmddaq.registry import OPTIM_WRAPPER_CONSTRUCTORS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SubmoduleOptimWrapperConstructor:
    """Build an :class:`OptimWrapperDict` with one wrapper per submodule.

    Each key of the config names an attribute of the model (e.g.
    ``generator``, ``quantized``) and holds an ordinary optim-wrapper
    config, built with MMEngine's default constructor on that submodule.
    Keys whose submodule is ``None`` are skipped (e.g. no generator in
    the PTQ baseline).

    Args:
        optim_wrapper_cfg (dict): ``{submodule name: optim_wrapper cfg}``.
        paramwise_cfg (dict, optional): Unused; per-key configs may carry
            their own ``paramwise_cfg``.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg=None) -> None:
        self.optim_wrapper_cfg = optim_wrapper_cfg

    def __call__(self, model) -> OptimWrapperDict:
        if is_model_wrapper(model):
            model = model.module
        wrappers = {}
        for name, cfg in self.optim_wrapper_cfg.items():
            module = getattr(model, name, None)
            if module is None:
                continue
            cfg = dict(cfg)
            paramwise = cfg.pop('paramwise_cfg', None)
            wrappers[name] = DefaultOptimWrapperConstructor(cfg, paramwise)(
                module)
        if not wrappers:
            raise ValueError('no optimizer wrapper was built: none of '
                             f'{list(self.optim_wrapper_cfg)} is a submodule')
        return OptimWrapperDict(**wrappers)
