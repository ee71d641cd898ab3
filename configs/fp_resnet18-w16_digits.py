# Train the small full-precision classifier that the digits testbed
# quantizes:  python tools/train.py configs/fp_resnet18-w16_digits.py
_base_ = [
    './_base_/models/resnet18-w16_digits.py',
    './_base_/datasets/digits.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)

model = dict(data_preprocessor={{_base_.data_preprocessor}})

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
param_scheduler = dict(type='CosineAnnealingLR', T_max=15, by_epoch=True)
train_cfg = dict(by_epoch=True, max_epochs=15, val_interval=5)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=15, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
