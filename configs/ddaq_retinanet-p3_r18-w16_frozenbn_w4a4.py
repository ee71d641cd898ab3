# DDAQ W4A4 of the frozen-BN RetinaNet with mmdet's FPN levels P3-P7
# (frozenbn-retinanet-p3): the recipe of the P2-P6 testbed, unchanged, on a
# detector whose finest level reads C3 (32 channels) as mmdet's RetinaNet
# does, not the 16 channels of C2. The FP model:
#   configs/fp_retinanet-p3_r18-w16_frozenbn.py (its header lists the steps)
#   python tools/train.py configs/ddaq_retinanet-p3_r18-w16_frozenbn_w4a4.py
_base_ = './ddaq_retinanet_r18-w16_frozenbn_w4a4.py'
model = dict(
    architecture=dict(
        neck=dict(start_level=1),
        bbox_head=dict(
            anchor_generator=dict(
                octave_base_scale=1, strides=[8, 16, 32, 64, 128]))),
    fp_checkpoint='work_dirs/fp_retinanet-p3_r18-w16_frozenbn/epoch_30.pth')
