# A small Faster R-CNN for the offline shapes testbed: ResNet-18 at a quarter
# width, FPN with 64 channels, small anchors, 5 classes, and far fewer
# proposals and RoIs than COCO's defaults (a few objects per image), which
# keeps training in CPU minutes.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'
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
        bbox_head=dict(num_classes=5, in_channels=64, fc_out_channels=256)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100)))
