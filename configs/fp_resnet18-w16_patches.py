# Pretrain the backbone of the frozen-BN detection testbeds: mmdet's
# ResNet-18 layout (7x7 stem + max-pool) at a quarter width, as an mmpretrain
# classifier of photo patches. Its weights match mmdet's ResNet names, so a
# detector loads them with init_cfg=dict(type='Pretrained', prefix='backbone.').
#   python tools/make_shapes.py --preset patches
#   python tools/train.py configs/fp_resnet18-w16_patches.py
_base_ = [
    './_base_/datasets/patches.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(
        type='ResNet', depth=18, stem_channels=16, base_channels=16,
        out_indices=(3, ), style='pytorch'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead', num_classes=10, in_channels=128,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))

optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4))
param_scheduler = dict(type='CosineAnnealingLR', T_max=12, by_epoch=True)
train_cfg = dict(by_epoch=True, max_epochs=12, val_interval=4)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=12, max_keep_ckpts=1))
randomness = dict(seed=0, deterministic=False)
