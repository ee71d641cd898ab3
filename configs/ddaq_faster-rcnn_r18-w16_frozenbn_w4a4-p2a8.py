# The frozen-BN Faster R-CNN's DDAQ W4A4 with one more layer at 8 bits: the
# input activations of the finest FPN lateral (a 1x1 conv over the 16
# channels of C2 that makes P2). tools/activation_gaps.py found it costs
# the largest part of the 4-bit activations' mAP on the tune split, as on
# the frozen-BN RetinaNet (Round 20, docs/benchmarks.md); weights stay at
# 4 bits.
#   python tools/train.py configs/ddaq_faster-rcnn_r18-w16_frozenbn_w4a4-p2a8.py
_base_ = './ddaq_faster-rcnn_r18-w16_frozenbn_w4a4.py'
model = dict(
    quantizer=dict(
        overrides=[dict(pattern='neck.lateral_convs.0.conv', a_bits=8)]))
