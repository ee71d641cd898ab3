# The harder "small shapes" set of the frozen-BN testbeds: 10 classes of
# 8-24 px shapes, 2-8 per image, 128x128 (mmddaq.datasets.SMALL_SHAPES),
# 1000 train / 200 val (reported) / 200 tune (recipes chosen) images. Made
# offline by  python tools/make_shapes.py --preset small
_base_ = './shapes_detection.py'
data_root = 'data/shapes_small/'
metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star', 'cross', 'hexagon',
             'ring', 'half_disc', 'arrow', 'ell'),
    palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 180, 0),
             (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60),
             (0, 128, 128), (170, 110, 40)])
train_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 filter_cfg=dict(filter_empty_gt=True, min_size=8)))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
real_calib_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo))
