# Mixed-precision weights allocated from layer importance.
# Written by:
#   python tools/allocate_bits.py \
#       configs/ddaq_retinanet_r18-w16_shapes_w4a4.py --checkpoint \
#       work_dirs/fp_retinanet_r18-w16_shapes/epoch_30.pth --avg-w-bits 4 \
#       --importance-options num_batches=4 num_probes=8 --out \
#       configs/mixed/ddaq-mixed-w4a4_retinanet_r18-w16_shapes.py --plot \
#       docs/benchmarks/shapes_retinanet_mixed_bits.png
# Importance: HessianImportance on gaussian inputs (seed 0),
#   FP weights work_dirs/fp_retinanet_r18-w16_shapes/epoch_30.pth.
# Budget: 4 bits/weight on average over the 32 allocated layers
#   (1081344 weights);
#   3 layers pinned by the base config are excluded and keep their bits ([8]).
# Candidates: 2, 3, 4, 5, 6, 8. Activations keep the base config's bits.
# Achieved: 3.9986 bits/weight over the allocated layers; all quantized
#   conv/linear weights: 4715904 bits (4.1721 bits/weight, 1130352 weights).
_base_ = ['../ddaq_retinanet_r18-w16_shapes_w4a4.py']

model = dict(
    quantizer=dict(
        layer_bits={
            # layer: weight bits,  # importance, weights
            'backbone.layer1.0.conv1': 8,  # 0.554, 2304
            'backbone.layer1.0.conv2': 8,  # 0.3339, 2304
            'backbone.layer1.1.conv1': 6,  # 0.1148, 2304
            'backbone.layer1.1.conv2': 8,  # 0.1338, 2304
            'backbone.layer2.0.conv1': 6,  # 0.2357, 4608
            'backbone.layer2.0.conv2': 6,  # 0.4024, 9216
            'backbone.layer2.0.downsample.0': 8,  # 3.486, 512
            'backbone.layer2.1.conv1': 8,  # 0.6387, 9216
            'backbone.layer2.1.conv2': 4,  # 0.01559, 9216
            'backbone.layer3.0.conv1': 5,  # 0.06344, 18432
            'backbone.layer3.0.conv2': 5,  # 0.1421, 36864
            'backbone.layer3.0.downsample.0': 8,  # 0.8878, 2048
            'backbone.layer3.1.conv1': 4,  # 0.06414, 36864
            'backbone.layer3.1.conv2': 3,  # 0.007167, 36864
            'backbone.layer4.0.conv1': 3,  # 0.01967, 73728
            'backbone.layer4.0.conv2': 3,  # 0.1091, 147456
            'backbone.layer4.0.downsample.0': 8,  # 1.053, 8192
            'backbone.layer4.1.conv1': 3,  # 0.02121, 147456
            'backbone.layer4.1.conv2': 3,  # 0.06179, 147456
            'neck.lateral_convs.0.conv': 8,  # 0.3119, 1024
            'neck.lateral_convs.1.conv': 8,  # 0.1318, 2048
            'neck.lateral_convs.2.conv': 8,  # 0.4597, 4096
            'neck.lateral_convs.3.conv': 8,  # 0.5225, 8192
            'neck.fpn_convs.0.conv': 5,  # 0.2769, 36864
            'neck.fpn_convs.1.conv': 6,  # 0.4837, 36864
            'neck.fpn_convs.2.conv': 4,  # 0.02407, 36864
            'neck.fpn_convs.3.conv': 3,  # 0.006813, 36864
            'neck.fpn_convs.4.conv': 3,  # 0.01749, 73728
            'bbox_head.cls_convs.0.conv': 5,  # 0.21, 36864
            'bbox_head.cls_convs.1.conv': 5,  # 0.3123, 36864
            'bbox_head.reg_convs.0.conv': 6,  # 2.288, 36864
            'bbox_head.reg_convs.1.conv': 8,  # 21.55, 36864
        }))
