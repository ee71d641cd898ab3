# DDAQ W4A4 of mmdet's Faster R-CNN R50-FPN (COCO 1x), first conv and the
# RPN/RoI output layers kept at 8 bits. The RoI head of both models runs on
# the FP model's proposals during distillation.
# Needs: COCO val2017 under data/coco (evaluation only), a GPU with >= 24 GB
# at batch 8, the official FP checkpoint below (or a local copy).
#   python tools/train.py configs/ddaq_faster-rcnn_w4a4.py
_base_ = [
    './_base_/ddaq_detection_coco.py',
    'mmdet::_base_/models/faster-rcnn_r50_fpn.py',
]
fp_checkpoint = (
    'https://download.openmmlab.com/mmdetection/v2.0/faster_rcnn/'
    'faster_rcnn_r50_fpn_1x_coco/'
    'faster_rcnn_r50_fpn_1x_coco_20200130-047c8118.pth')
model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    architecture={{_base_.model}},
    fp_checkpoint=fp_checkpoint,
    input_shape={{_base_.input_shape}},
    quantizer=dict(
        type='mmddaq.ModelQuantizer',
        w_bits=4,
        a_bits=4,
        first_last_bits=8,
        first_last_layers=[
            'backbone.conv1', 'rpn_head.rpn_cls', 'rpn_head.rpn_reg',
            'roi_head.bbox_head.fc_cls', 'roi_head.bbox_head.fc_reg'
        ]),
    generator={{_base_.generator}},
    adapter=dict(type='mmddaq.TwoStageDetectorAdapter'),
    loss_weights={{_base_.loss_weights}})
