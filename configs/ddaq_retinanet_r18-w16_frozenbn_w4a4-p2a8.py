# The frozen-BN RetinaNet's DDAQ W4A4 with one more layer at 8 bits: the
# input activations of the finest FPN lateral (a 1x1 conv over the 16
# channels of C2 that makes P2, where the 8-24 px objects are found; about
# 0.3 % of the detector's multiply-accumulates). tools/activation_gaps.py
# found it costs most of the 4-bit activations' mAP on the tune split
# (Round 18, docs/benchmarks.md); weights stay at 4 bits.
#   python tools/train.py configs/ddaq_retinanet_r18-w16_frozenbn_w4a4-p2a8.py
_base_ = './ddaq_retinanet_r18-w16_frozenbn_w4a4.py'
model = dict(
    quantizer=dict(
        overrides=[dict(pattern='neck.lateral_convs.0.conv', a_bits=8)]))
