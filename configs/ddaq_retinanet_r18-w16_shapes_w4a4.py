# DDAQ W4A4 of the small shapes RetinaNet (first conv and the class/box
# output convs at 8 bits, like the COCO configs), offline:
#   python tools/make_shapes.py --out data/shapes
#   python tools/train.py configs/fp_retinanet_r18-w16_shapes.py
#   python tools/train.py configs/ddaq_retinanet_r18-w16_shapes_w4a4.py
_base_ = [
    './_base_/ddaq_shapes_detection.py',
    './_base_/datasets/shapes_detection.py',
    './_base_/models/retinanet_r18-w16_shapes.py',
]
train_dataloader = None  # data-free: the generator makes every batch
model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    architecture={{_base_.model}},
    fp_checkpoint='work_dirs/fp_retinanet_r18-w16_shapes/epoch_30.pth',
    input_shape={{_base_.input_shape}},
    quantizer=dict(
        type='mmddaq.ModelQuantizer',
        w_bits=4,
        a_bits=4,
        first_last_bits=8,
        first_last_layers=[
            'backbone.conv1', 'bbox_head.retina_cls', 'bbox_head.retina_reg'
        ]),
    generator={{_base_.generator}},
    adapter=dict(type='mmddaq.OneStageDetectorAdapter'),
    loss_weights={{_base_.loss_weights}})
# post-training: the RetinaNet recipe of the shared base (chosen on the
# frozen-BN RetinaNet's tune split, confirmed on this suite's, Round 12)
custom_hooks = {{_base_.retinanet_custom_hooks}}
