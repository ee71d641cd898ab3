"""Every shipped config parses and builds its model (no weights needed)."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from conftest import ROOT
from mmddaq.apis import load_config
from mmddaq.models import DDAQ

CONFIGS = sorted(
    p for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                         recursive=True) if '_base_' not in p)


@pytest.mark.parametrize('path', CONFIGS,
                         ids=[osp.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds(path):
    cfg = load_config(path)
    assert cfg.get('custom_imports', {}).get('imports') == ['mmddaq']
    if str(cfg.model.type).endswith('DDAQ'):
        cfg.model.fp_checkpoint = None
        assert cfg.runner_type == 'mmddaq.DataFreeRunner'
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    if isinstance(model, DDAQ):
        assert model.taps and model.quantizer.w_bits in (2, 3, 4, 5, 6, 7, 8)


def test_mmddaq_config_scope(tmp_path):
    """Another project's config inherits mmddaq's data-free schedule."""
    cfg_file = tmp_path / 'my_ddaq_retinanet.py'
    cfg_file.write_text(
        "_base_ = ['mmddaq::_base_/ddaq_detection.py',\n"
        "          'mmdet::_base_/models/retinanet_r50_fpn.py']\n"
        "train_dataloader = None\n")
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.runner_type == 'mmddaq.DataFreeRunner'
    assert cfg.train_cfg.type == 'mmddaq.DataFreeTrainLoop'
    assert cfg.model.type == 'RetinaNet'  # the user's model, untouched
    # the schedule brings no dataset: the user's data stays theirs
    assert 'test_dataloader' not in cfg and cfg.train_dataloader is None
    # the packaged file is the repository's
    from mmengine.utils import get_installed_path
    packaged = osp.join(get_installed_path('mmddaq'), '.mim', 'configs',
                        '_base_', 'ddaq_detection.py')
    assert osp.samefile(packaged, osp.join(ROOT, 'configs', '_base_',
                                           'ddaq_detection.py'))
