# A small full-precision RetinaNet for the offline shapes testbed: ResNet-18
# at a quarter width, FPN from stride 4 (objects are 7-50 px), 64 channels,
# two stacked head convs, 128x128 inputs. Trained from scratch:
#   python tools/make_shapes.py --out data/shapes
#   python tools/train.py configs/fp_retinanet_r18-w16_shapes.py
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    './_base_/datasets/shapes_detection.py',
    './_base_/schedules/shapes_fp_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        depth=18, base_channels=16, stem_channels=16, frozen_stages=-1,
        norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64, start_level=0,
              add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(
        num_classes=5, in_channels=64, feat_channels=64, stacked_convs=2,
        anchor_generator=dict(
            octave_base_scale=4, strides=[4, 8, 16, 32, 64])))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=1))
