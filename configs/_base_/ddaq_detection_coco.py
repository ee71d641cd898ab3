# Data-free quantization of an mmdet detector, evaluated on COCO val2017:
# the data-free schedule (./ddaq_detection.py) with mmdet's COCO dataset.
# Child configs add an mmdet model base (e.g.
# 'mmdet::_base_/models/retinanet_r50_fpn.py') and build
# model = dict(type='mmddaq.DDAQ', architecture={{_base_.model}}, ...) from
# the shared pieces of ./ddaq_detection.py.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    './ddaq_detection.py',
]
train_dataloader = None  # data-free: the generator makes every batch
# a class-conditional generator with the detection prior: one of COCO's 80
# classes per image, which the FP detector should find there (without it
# the frozen-BN testbed's generator collapsed onto one image, Round 5)
generator = dict(num_classes=80)
loss_weights = dict(ce=1.0)
