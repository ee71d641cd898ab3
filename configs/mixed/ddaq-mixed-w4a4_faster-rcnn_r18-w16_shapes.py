# Mixed-precision weights allocated from layer importance.
# Written by:
#   python tools/allocate_bits.py \
#       configs/ddaq_faster-rcnn_r18-w16_shapes_w4a4.py --checkpoint \
#       work_dirs/fp_faster-rcnn_r18-w16_shapes/epoch_30.pth --avg-w-bits 4 \
#       --importance-options num_batches=4 num_probes=8 --out \
#       configs/mixed/ddaq-mixed-w4a4_faster-rcnn_r18-w16_shapes.py --plot \
#       docs/benchmarks/shapes_faster-rcnn_mixed_bits.png
# Importance: HessianImportance on gaussian inputs (seed 0),
#   FP weights work_dirs/fp_faster-rcnn_r18-w16_shapes/epoch_30.pth.
# Budget: 4 bits/weight on average over the 30 allocated layers
#   (1765376 weights);
#   5 layers pinned by the base config are excluded and keep their bits ([8]).
# Candidates: 2, 3, 4, 5, 6, 8. Activations keep the base config's bits.
# Achieved: 3.9965 bits/weight over the allocated layers; all quantized
#   conv/linear weights: 7135104 bits (4.0190 bits/weight, 1775344 weights).
_base_ = ['../ddaq_faster-rcnn_r18-w16_shapes_w4a4.py']

model = dict(
    quantizer=dict(
        layer_bits={
            # layer: weight bits,  # importance, weights
            'backbone.layer1.0.conv1': 8,  # 0.2699, 2304
            'backbone.layer1.0.conv2': 8,  # 0.5783, 2304
            'backbone.layer1.1.conv1': 8,  # 1.223, 2304
            'backbone.layer1.1.conv2': 8,  # 0.6438, 2304
            'backbone.layer2.0.conv1': 8,  # 1.131, 4608
            'backbone.layer2.0.conv2': 6,  # 0.7361, 9216
            'backbone.layer2.0.downsample.0': 8,  # 3.684, 512
            'backbone.layer2.1.conv1': 6,  # 0.2244, 9216
            'backbone.layer2.1.conv2': 6,  # 0.6332, 9216
            'backbone.layer3.0.conv1': 6,  # 0.3963, 18432
            'backbone.layer3.0.conv2': 4,  # 0.04354, 36864
            'backbone.layer3.0.downsample.0': 8,  # 1.373, 2048
            'backbone.layer3.1.conv1': 5,  # 0.2375, 36864
            'backbone.layer3.1.conv2': 4,  # 0.07654, 36864
            'backbone.layer4.0.conv1': 4,  # 0.1007, 73728
            'backbone.layer4.0.conv2': 3,  # 0.1106, 147456
            'backbone.layer4.0.downsample.0': 6,  # 0.7817, 8192
            'backbone.layer4.1.conv1': 3,  # 0.0307, 147456
            'backbone.layer4.1.conv2': 2,  # 0.02033, 147456
            'neck.lateral_convs.0.conv': 8,  # 0.6905, 1024
            'neck.lateral_convs.1.conv': 8,  # 0.3531, 2048
            'neck.lateral_convs.2.conv': 8,  # 0.2905, 4096
            'neck.lateral_convs.3.conv': 5,  # 0.05205, 8192
            'neck.fpn_convs.0.conv': 5,  # 0.6054, 36864
            'neck.fpn_convs.1.conv': 4,  # 0.07171, 36864
            'neck.fpn_convs.2.conv': 4,  # 0.04093, 36864
            'neck.fpn_convs.3.conv': 4,  # 0.04575, 36864
            'rpn_head.rpn_conv': 5,  # 0.5132, 36864
            'roi_head.bbox_head.shared_fcs.0': 4,  # 4.957, 802816
            'roi_head.bbox_head.shared_fcs.1': 8,  # 14.91, 65536
        }))
