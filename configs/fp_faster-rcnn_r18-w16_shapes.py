# A small full-precision Faster R-CNN for the offline shapes testbed:
# ResNet-18 at a quarter width, FPN from stride 4 with 64 channels, small
# anchors, 128x128 inputs. Trained from scratch:
#   python tools/make_shapes.py --out data/shapes
#   python tools/train.py configs/fp_faster-rcnn_r18-w16_shapes.py
_base_ = [
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py',
    './_base_/datasets/shapes_detection.py',
    './_base_/schedules/shapes_fp_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        depth=18, base_channels=16, stem_channels=16, frozen_stages=-1,
        norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=64),
    rpn_head=dict(
        in_channels=64, feat_channels=64,
        anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(num_classes=5, in_channels=64, fc_out_channels=256)))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=1))
