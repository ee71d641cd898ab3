# DDAQ W4A4 of mmpretrain's MobileNetV2 on ImageNet; same requirements and
# schedule as the ResNet-18 config.
_base_ = './ddaq_resnet18_w4a4_in1k.py'
fp_checkpoint = ('https://download.openmmlab.com/mmclassification/v0/'
                 'mobilenet_v2/mobilenet_v2_batch256_imagenet_20200708-'
                 '3b2dc3af.pth')
model = dict(
    fp_checkpoint=fp_checkpoint,
    architecture=dict(
        _delete_=True,
        type='ImageClassifier',
        backbone=dict(type='MobileNetV2', widen_factor=1.0),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(
            type='LinearClsHead',
            num_classes=1000,
            in_channels=1280,
            loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
            topk=(1, 5))))
