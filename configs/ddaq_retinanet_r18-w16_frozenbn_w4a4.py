# DDAQ W4A4 of the frozen-BN RetinaNet (frozenbn-retinanet: backbone
# pretrained on photo patches, BN frozen, 10 classes of small shapes; first
# conv and the class/box output convs at 8 bits), offline. The FP model:
#   configs/fp_retinanet_r18-w16_frozenbn.py (its header lists the steps)
#   python tools/train.py configs/ddaq_retinanet_r18-w16_frozenbn_w4a4.py
# D1 matches the backbone's frozen BN statistics, which describe the
# pretraining patches, not the detection images.
_base_ = [
    './_base_/ddaq_shapes_detection.py',
    './_base_/datasets/shapes_small_detection.py',
    './_base_/models/retinanet_r18-w16_frozenbn.py',
]
train_dataloader = None  # data-free: the generator makes every batch
model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    # every weight comes from the FP checkpoint (the backbone's init_cfg,
    # the pretrained patch classifier, is never loaded here)
    architecture={{_base_.model}},
    fp_checkpoint='work_dirs/fp_retinanet_r18-w16_frozenbn/epoch_30.pth',
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
