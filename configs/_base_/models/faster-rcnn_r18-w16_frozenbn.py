# The shapes Faster R-CNN trained the way real mmdet detectors are: backbone
# from the photo-patch classifier (configs/fp_resnet18-w16_patches.py), BN
# frozen (norm_eval=True), stem and layer1 frozen (frozen_stages=1); no BN in
# FPN, RPN or RoI head. 10 classes of 8-24 px objects: RPN anchors of 8 px at
# stride 4 (16 at stride 8, ...).
_base_ = './faster-rcnn_r18-w16_shapes.py'
pretrained = 'work_dirs/fp_resnet18-w16_patches/epoch_12.pth'
model = dict(
    backbone=dict(
        frozen_stages=1, norm_eval=True,
        init_cfg=dict(
            _delete_=True, type='Pretrained', checkpoint=pretrained,
            prefix='backbone.')),
    rpn_head=dict(anchor_generator=dict(scales=[2])),
    roi_head=dict(bbox_head=dict(num_classes=10)))
