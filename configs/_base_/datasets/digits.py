# scikit-learn's bundled handwritten digits (987 train / 270 tune / 540 test,
# fixed seeded disjoint splits), upsampled to 32x32x3. Ships with
# scikit-learn: no download. Recipes are chosen on `tune`
# (--cfg-options test_dataloader.dataset.split=tune); `test` is reported.
dataset_type = 'mmddaq.DigitsDataset'
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=10,
    # pixel statistics of the train split (0-255 scale)
    mean=[78.0, 78.0, 78.0],
    std=[83.0, 83.0, 83.0],
    to_rgb=False)

train_pipeline = [
    dict(type='RandomCrop', crop_size=32, padding=2),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(type=dataset_type, split='train', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
val_dataloader = dict(
    batch_size=270,
    num_workers=0,
    dataset=dict(type=dataset_type, split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
# Real training images for the `qdrop-real` upper bound (not data-free).
real_calib_dataloader = dict(
    batch_size=64,
    num_workers=0,
    dataset=dict(type=dataset_type, split='train', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
