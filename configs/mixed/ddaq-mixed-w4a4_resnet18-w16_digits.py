# Mixed-precision weights allocated from layer importance.
# Written by:
#   python tools/allocate_bits.py configs/ddaq_resnet18-w16_digits_w4a4.py \
#       --checkpoint work_dirs/fp_resnet18-w16_digits/epoch_15.pth \
#       --avg-w-bits 4 --importance-options num_batches=8 num_probes=16 --out \
#       configs/mixed/ddaq-mixed-w4a4_resnet18-w16_digits.py --plot \
#       docs/benchmarks/digits_mixed_bits.png
# Importance: HessianImportance on gaussian inputs (seed 0),
#   FP weights work_dirs/fp_resnet18-w16_digits/epoch_15.pth.
# Budget: 4 bits/weight on average over the 21 allocated layers
#   (699056 weights);
#   0 layers pinned by the base config are excluded and keep their bits.
# Candidates: 2, 3, 4, 5, 6, 8. Activations keep the base config's bits.
# Achieved: 3.9922 bits/weight over the allocated layers; all quantized
#   conv/linear weights: 2790784 bits (3.9922 bits/weight, 699056 weights).
_base_ = ['../ddaq_resnet18-w16_digits_w4a4.py']

model = dict(
    quantizer=dict(
        layer_bits={
            # layer: weight bits,  # importance, weights
            'backbone.conv1': 8,  # 0.6151, 432
            'backbone.layer1.0.conv1': 8,  # 1.25, 2304
            'backbone.layer1.0.conv2': 8,  # 2.729, 2304
            'backbone.layer1.1.conv1': 8,  # 1.856, 2304
            'backbone.layer1.1.conv2': 8,  # 1.554, 2304
            'backbone.layer2.0.conv1': 8,  # 0.2886, 4608
            'backbone.layer2.0.conv2': 8,  # 0.1634, 9216
            'backbone.layer2.0.downsample.0': 8,  # 4.235, 512
            'backbone.layer2.1.conv1': 8,  # 2.372, 9216
            'backbone.layer2.1.conv2': 8,  # 0.7841, 9216
            'backbone.layer3.0.conv1': 8,  # 0.4603, 18432
            'backbone.layer3.0.conv2': 6,  # 0.369, 36864
            'backbone.layer3.0.downsample.0': 8,  # 2.108, 2048
            'backbone.layer3.1.conv1': 8,  # 1.212, 36864
            'backbone.layer3.1.conv2': 6,  # 0.5881, 36864
            'backbone.layer4.0.conv1': 4,  # 0.03304, 73728
            'backbone.layer4.0.conv2': 3,  # 0.00695, 147456
            'backbone.layer4.0.downsample.0': 8,  # 0.3465, 8192
            'backbone.layer4.1.conv1': 2,  # 0.003999, 147456
            'backbone.layer4.1.conv2': 3,  # 0.004582, 147456
            'head.fc': 8,  # 0.02118, 1280
        }))
