import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmddaq  # noqa: E402,F401

DDAQ_CONFIG = osp.join(ROOT, 'configs', 'ddaq_resnet18-w16_digits_w4a4.py')
FP_CONFIG = osp.join(ROOT, 'configs', 'fp_resnet18-w16_digits.py')

#: overrides that shrink the digits configs to a few seconds on a CPU
TINY_MODEL = {
    'model.backbone.stem_channels': 8,
    'model.backbone.base_channels': 8,
    'model.head.in_channels': 64,
}


def tiny_ddaq_options(fp_checkpoint, max_iters=4, warmup=1, calib=2):
    return {
        'model.architecture.backbone.stem_channels': 8,
        'model.architecture.backbone.base_channels': 8,
        'model.architecture.head.in_channels': 64,
        'model.generator.base_channels': 16,
        'model.generator.latent_dim': 16,
        'model.fp_checkpoint': fp_checkpoint,
        'train_cfg.max_iters': max_iters,
        'train_cfg.batch_size': 8,
        'train_cfg.warmup_iters': warmup,
        'train_cfg.val_interval': max_iters,
        'custom_hooks': [
            dict(type='mmddaq.LayerImportanceHook',
                 method=dict(type='HessianImportance', batch_size=4,
                             num_batches=1, num_probes=2)),
            dict(type='mmddaq.ActivationCalibrationHook', calib_iters=calib),
            dict(type='mmddaq.GeneratedSamplesHook', interval=2,
                 num_samples=4),
        ],
    }


@pytest.fixture(scope='session')
def tiny_fp_checkpoint(tmp_path_factory):
    """A tiny digits classifier's weights (random init; mechanics only)."""
    from mmengine.registry import MODELS, init_default_scope

    from mmddaq.apis import load_config
    init_default_scope('mmpretrain')
    cfg = load_config(FP_CONFIG, TINY_MODEL)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    # give BN layers non-trivial statistics
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32), mode='tensor')
    path = tmp_path_factory.mktemp('fp') / 'tiny_fp.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)
