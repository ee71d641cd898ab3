# A small RetinaNet for the offline shapes testbed: ResNet-18 at a quarter
# width, FPN from stride 4 (objects are 7-50 px), 64 channels, two stacked
# head convs, 5 classes.
_base_ = 'mmdet::_base_/models/retinanet_r50_fpn.py'
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
