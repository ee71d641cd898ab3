"""Every shipped config parses and builds its model (no weights needed)."""
import glob
import os.path as osp

import pytest
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
