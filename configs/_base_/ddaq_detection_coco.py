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
