"""mmddaq: data-free quantization (DDAQ) for OpenMMLab models.

Importing the package registers its components in the ``mmddaq`` scope of
MMEngine's registries (``custom_imports = dict(imports=['mmddaq'])``) and
makes checkpoint loading work on torch >= 2.6 without disabling
``weights_only`` safety. It also opens the ``mmddaq::`` config scope:
``_base_ = ['mmddaq::_base_/ddaq_detection.py']`` inherits mmddaq's
configs, which ship inside the package (``mmddaq/.mim/configs``).
"""
from .version import __version__  # noqa: F401
from . import registry  # noqa: F401
from .utils.checkpoint import install_safe_checkpoint_loading
from .utils.config_scope import register_config_scope

install_safe_checkpoint_loading()
register_config_scope()

from . import datasets, engine, generators, importance  # noqa: F401,E402
from . import apis, losses, models, quantization  # noqa: F401,E402
