# FP RetinaNet of the frozen-BN testbed with mmdet's FPN levels P3-P7
# (frozenbn-retinanet-p3), offline:
#   python tools/make_shapes.py --preset patches
#   python tools/train.py configs/fp_resnet18-w16_patches.py
#   python tools/make_shapes.py --preset small
#   python tools/train.py configs/fp_retinanet-p3_r18-w16_frozenbn.py
_base_ = [
    './_base_/models/retinanet-p3_r18-w16_frozenbn.py',
    './_base_/datasets/shapes_small_detection.py',
    './_base_/schedules/shapes_fp_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=10, max_keep_ckpts=1))
