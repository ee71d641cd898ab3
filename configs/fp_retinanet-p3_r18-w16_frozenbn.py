# FP RetinaNet of the frozen-BN testbed with mmdet's FPN levels
# (frozenbn-retinanet-p3): FPN from C3 (start_level=1, P3-P7 at strides
# 8-128) as in mmdet::_base_/models/retinanet_r50_fpn.py, instead of from C2;
# the anchors keep the P2 testbed's sizes (8 px and up): octave_base_scale 1
# at stride 8 where that one has 2 at 4. Offline: the steps of
#   configs/fp_retinanet_r18-w16_frozenbn.py, then
#   python tools/train.py configs/fp_retinanet-p3_r18-w16_frozenbn.py
_base_ = './fp_retinanet_r18-w16_frozenbn.py'
model = dict(
    neck=dict(start_level=1),
    bbox_head=dict(
        anchor_generator=dict(
            octave_base_scale=1, strides=[8, 16, 32, 64, 128])))
