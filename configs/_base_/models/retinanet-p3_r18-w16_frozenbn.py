# The frozen-BN RetinaNet with mmdet's RetinaNet levels: FPN from C3
# (start_level=1, P3-P7 at strides 8-128) as in
# mmdet::_base_/models/retinanet_r50_fpn.py, instead of from C2 (P2-P6).
# The anchors keep the sizes of the P2 testbed (8 px and up for 8-24 px
# objects): octave_base_scale 1 at stride 8 where that one has 2 at 4.
_base_ = './retinanet_r18-w16_frozenbn.py'
model = dict(
    neck=dict(start_level=1),
    bbox_head=dict(
        anchor_generator=dict(
            octave_base_scale=1, strides=[8, 16, 32, 64, 128])))
