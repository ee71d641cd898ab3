# The shapes RetinaNet trained the way real mmdet detectors are: backbone
# from the photo-patch classifier (configs/fp_resnet18-w16_patches.py), BN
# frozen (norm_eval=True), stem and layer1 frozen (frozen_stages=1); no BN in
# FPN or head. 10 classes of 8-24 px objects: anchors from 8 px at stride 4.
_base_ = './retinanet_r18-w16_shapes.py'
pretrained = 'work_dirs/fp_resnet18-w16_patches/epoch_12.pth'
model = dict(
    backbone=dict(
        frozen_stages=1, norm_eval=True,
        init_cfg=dict(
            _delete_=True, type='Pretrained', checkpoint=pretrained,
            prefix='backbone.')),
    bbox_head=dict(
        num_classes=10, anchor_generator=dict(octave_base_scale=2)))
