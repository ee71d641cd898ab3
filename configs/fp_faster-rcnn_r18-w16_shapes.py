# The small full-precision Faster R-CNN of the offline shapes testbed, trained
# from scratch at 128x128 in CPU minutes:
#   python tools/make_shapes.py --out data/shapes
#   python tools/train.py configs/fp_faster-rcnn_r18-w16_shapes.py
_base_ = [
    './_base_/models/faster-rcnn_r18-w16_shapes.py',
    './_base_/datasets/shapes_detection.py',
    './_base_/schedules/shapes_fp_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=1))
