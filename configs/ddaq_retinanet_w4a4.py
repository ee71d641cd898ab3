# DDAQ W4A4 of mmdet's RetinaNet R50-FPN (COCO 1x), first conv and the
# class/box output convs kept at 8 bits.
# Needs: COCO val2017 under data/coco (evaluation only; set data_root with
# --cfg-options or edit), a GPU with >= 24 GB at batch 8 (lower
# train_cfg.batch_size otherwise), and the official FP checkpoint below
# (downloaded on first use; point fp_checkpoint at a local copy offline).
#   python tools/train.py configs/ddaq_retinanet_w4a4.py
#   bash tools/dist_train.sh configs/ddaq_retinanet_w4a4.py 8
_base_ = [
    './_base_/ddaq_detection_coco.py',
    'mmdet::_base_/models/retinanet_r50_fpn.py',
]
fp_checkpoint = (
    'https://download.openmmlab.com/mmdetection/v2.0/retinanet/'
    'retinanet_r50_fpn_1x_coco/retinanet_r50_fpn_1x_coco_20200130-c2398f9e.pth')
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
            'backbone.conv1', 'bbox_head.retina_cls', 'bbox_head.retina_reg'
        ]),
    generator={{_base_.generator}},
    adapter=dict(type='mmddaq.OneStageDetectorAdapter'),
    loss_weights={{_base_.loss_weights}})
