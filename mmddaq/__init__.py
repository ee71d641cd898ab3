"""mmddaq: data-free quantization (DDAQ) for OpenMMLab models.

Importing the package registers its components in the ``mmddaq`` scope of
MMEngine's registries (``custom_imports = dict(imports=['mmddaq'])``) and
makes checkpoint loading work on torch >= 2.6 without disabling
``weights_only`` safety.
"""
from .version import __version__  # noqa: F401
from . import registry  # noqa: F401
from .utils.checkpoint import install_safe_checkpoint_loading

install_safe_checkpoint_loading()

from . import datasets, engine, generators, importance  # noqa: F401,E402
from . import apis, losses, models, quantization  # noqa: F401,E402
