# Synthetic "shapes" COCO-format detection set: 5 classes of coloured shapes
# on crops of scikit-image's bundled photographs, 128x128. Made offline by
#   python tools/make_shapes.py --out data/shapes --num-train 800 --num-val 200
# (mmddaq/datasets/shapes.py; keep `metainfo` equal to shapes_metainfo()).
dataset_type = 'CocoDataset'
data_root = 'data/shapes/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'cross'),
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 180, 0),
             (145, 30, 180)])
backend_args = None

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    # If you don't have a gt annotation, delete the pipeline
    dict(type='LoadAnnotations', with_bbox=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
test_dataloader = val_dataloader

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator

# Real training images for the `qdrop-real` upper bound (not data-free):
# the val loader's settings on the train split.
real_calib_dataloader = dict(
    val_dataloader,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        val_dataloader['dataset'],
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/')))
