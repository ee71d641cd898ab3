# Photo-patch classification set that pretrains the frozen-BN testbeds'
# backbone: 64x64 crops of scikit-image's bundled photographs, one class per
# photograph (10), 400 train / 50 val patches per class. Made offline by
# mmddaq.datasets.ensure_patches() (tools/make_shapes.py --preset patches).
dataset_type = 'CustomDataset'
data_root = 'data/patches'
# ImageNet statistics and BGR->RGB, as mmdet's detectors normalise
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=10,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=100,
    num_workers=0,
    dataset=dict(type=dataset_type, data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
