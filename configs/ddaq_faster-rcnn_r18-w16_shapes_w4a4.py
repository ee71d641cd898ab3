# DDAQ W4A4 of the small shapes Faster R-CNN (first conv and the RPN/RoI
# output layers at 8 bits, like the COCO config), offline:
#   python tools/make_shapes.py --out data/shapes
#   python tools/train.py configs/fp_faster-rcnn_r18-w16_shapes.py
#   python tools/train.py configs/ddaq_faster-rcnn_r18-w16_shapes_w4a4.py
# The RoI head of both models runs on the FP model's proposals.
_base_ = [
    './_base_/ddaq_shapes_detection.py',
    './_base_/datasets/shapes_detection.py',
    './_base_/models/faster-rcnn_r18-w16_shapes.py',
]
train_dataloader = None  # data-free: the generator makes every batch
model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    architecture={{_base_.model}},
    fp_checkpoint='work_dirs/fp_faster-rcnn_r18-w16_shapes/epoch_30.pth',
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
