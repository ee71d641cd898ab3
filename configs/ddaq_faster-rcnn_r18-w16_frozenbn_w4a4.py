# DDAQ W4A4 of the frozen-BN Faster R-CNN (frozenbn-faster-rcnn: backbone
# pretrained on photo patches, BN frozen, 10 classes of small shapes; first
# conv and the RPN/RoI output layers at 8 bits), offline. The FP model:
#   configs/fp_faster-rcnn_r18-w16_frozenbn.py (its header lists the steps)
#   python tools/train.py configs/ddaq_faster-rcnn_r18-w16_frozenbn_w4a4.py
# The recipe is the frozen-BN RetinaNet's (chosen on its tune split,
# docs/benchmarks.md, Rounds 5-7): a class-conditional generator with the
# detection prior (RPN objectness and RoI class of the label), then
# Gaussian-calibrated activation ranges and block reconstruction on the
# generator's samples, focused where the FP RPN sees objects. The RoI head
# of both models runs on the FP model's proposals.
_base_ = [
    './_base_/ddaq_shapes_detection.py',
    './_base_/datasets/shapes_small_detection.py',
    './_base_/models/faster-rcnn_r18-w16_frozenbn.py',
]
train_dataloader = None  # data-free: the generator makes every batch
model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    # every weight comes from the FP checkpoint (the backbone's init_cfg,
    # the pretrained patch classifier, is never loaded here)
    architecture={{_base_.model}},
    fp_checkpoint='work_dirs/fp_faster-rcnn_r18-w16_frozenbn/epoch_30.pth',
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
    # one of the 10 classes per image; the FP detector should find it there
    generator=dict(
        type='mmddaq.Generator', img_size=128, num_classes=10, latent_dim=64,
        base_channels=64, num_upsamples=4),
    adapter=dict(type='mmddaq.TwoStageDetectorAdapter'),
    loss_weights=dict(ce=1.0, bns=1.0, dis=1.0, kd=1.0, q_dis=1.0))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=16),
    dict(type='mmddaq.PostTrainingHook',
         samples=dict(type='mmddaq.AlgorithmSamples'),
         calibration_samples=dict(type='mmddaq.GaussianSamples'),
         num_samples=256,
         batch_size=8,
         observers=dict(weight=dict(type='mmddaq.MSEObserver'),
                        act=dict(type='mmddaq.EMAMinMaxObserver')),
         # as the frozen-BN RetinaNet (Round 16): biases corrected on the
         # generator's pool before reconstruction
         bias_correction=True,
         # 300 steps per unit, rounding lr 0.05 (constant), LSQ step lr
         # 1e-3: chosen on the frozen-BN RetinaNet's tune split (Round 10)
         reconstruction=dict(
             type='mmddaq.BlockReconstruction', iters=300, batch_size=8,
             round_lr=0.05, act_lr=1e-3, focus=0.05),
         # as the frozen-BN RetinaNet (Round 17): activation steps tuned
         # against the RPN + RoI-head KD (not measured on this detector)
         output_tuning=dict(type='mmddaq.OutputTuning')),
]
