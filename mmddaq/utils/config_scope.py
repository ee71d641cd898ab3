"""The ``mmddaq::`` config scope.

MMEngine resolves ``_base_ = ['mmdet::...']`` through its table of
OpenMMLab packages and the ``.mim/configs`` folder each ships. mmddaq ships
its ``configs/`` the same way (``mmddaq/.mim/configs``); importing mmddaq
adds it to that table, so a config can inherit
``'mmddaq::_base_/ddaq_detection.py'`` once mmddaq is imported (its tools
import it first; elsewhere ``import mmddaq`` before loading the config).
"""

SCOPE = 'mmddaq'


def register_config_scope() -> None:
    """Let MMEngine configs say ``mmddaq::path/in/configs.py``."""
    from mmengine.config import utils
    utils.MODULE2PACKAGE.setdefault(SCOPE, 'mmddaq')


__all__ = ['register_config_scope']
