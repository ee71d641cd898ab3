# DDAQ W4A4 of the digits ResNet-18 (all layers at 4 bits, the image input at
# 8: the GDFQ convention, see ModelQuantizer input_bits).
#   python tools/train.py configs/fp_resnet18-w16_digits.py     # FP model
#   python tools/train.py configs/ddaq_resnet18-w16_digits_w4a4.py
# Only the test split is used, for evaluation; training sees no data.
_base_ = [
    './_base_/models/resnet18-w16_digits.py',
    './_base_/datasets/digits.py',
    './_base_/schedules/ddaq_runtime.py',
]
train_dataloader = None  # data-free: the generator makes every batch
fp_checkpoint = 'work_dirs/fp_resnet18-w16_digits/epoch_15.pth'
w_bits = 4
a_bits = 4

model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    architecture={{_base_.model}},
    data_preprocessor={{_base_.data_preprocessor}},
    fp_checkpoint=fp_checkpoint,
    input_shape=(3, 32, 32),
    quantizer=dict(
        type='mmddaq.ModelQuantizer',
        w_bits=w_bits,
        a_bits=a_bits,
        weight_quantizer=dict(symmetric=False),
        act_quantizer=dict(momentum=0.9)),
    # taper_size=8: the 16 and 32 px blocks get 32 and 16 channels (64 and
    # 32 untapered); recipe iteration 2.35 FP steps against 2.61, digits
    # tune split (3 seeds) W3A3 98.52 +- 0.98 against 98.52 +- 0.37, W4A4
    # 98.89 +- 0.37 against 99.14 +- 0.21 (docs/benchmarks.md, Round 24)
    generator=dict(
        type='mmddaq.Generator', img_size=32, num_classes=10,
        latent_dim=64, base_channels=64, taper_size=8),
    adapter=dict(type='mmddaq.ClassifierAdapter', kd_temperature=1.0),
    # D1 at 0.3: on the digits tune split (3 seeds) W4A4 97.90 with 0.1
    # against 96.54 with 1.0 (256-sample pool, Round 13); with the 1024 pool
    # 0.3 against 0.1 scored W3A3 95.93 +- 0.37 against 95.43 +- 1.19 and
    # W4A4 98.27 against 98.52 (two tune images fewer, on one seed)
    # (docs/benchmarks.md, Round 15)
    loss_weights=dict(ce=1.0, bns=0.3, dis=1.0, kd=1.0, q_dis=1.0))
# the paper's recipe (`ddaq-kd`: KD fine-tuning, no reconstruction) keeps D1
# at 1.0: on the digits tune split (3 seeds) 97.90 against 97.04 with 0.1
# (docs/benchmarks.md, Rounds 13 and 15)
kd_loss_weights = dict(bns=1.0)

optim_wrapper = dict(
    constructor='mmddaq.SubmoduleOptimWrapperConstructor',
    generator=dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999))),
    quantized=dict(
        optimizer=dict(
            type='SGD', lr=1e-4, momentum=0.9, nesterov=True,
            weight_decay=1e-4)))

# The generator alone is trained (D1 + D2 against the min-max quantized
# model, importance-weighted); the quantized model is then refined by block
# reconstruction on its samples (post_training below) instead of KD: on the
# digits tune split this scored 98.89 against 98.52 for KD fine-tuning
# (configs/baselines/ddaq-kd_*, the paper's recipe) and 97.78 for KD followed
# by reconstruction (docs/benchmarks.md).
train_cfg = dict(
    type='mmddaq.DataFreeTrainLoop',
    max_iters=400,
    batch_size=64,
    warmup_iters=400,
    val_interval=200)

# After training: 1024 generator samples, MSE ranges, block reconstruction
# (AdaRound + LSQ + QDrop): on the digits tune split this pipeline already
# matches FP (98.89), so the range estimators it starts from were not
# re-chosen. For calibration alone (no reconstruction) the tune split
# prefers 99.99-percentile activations (configs/baselines/ptq-mse_*,
# docs/benchmarks.md "Round 3").
# range search of the calibration-only baseline (`ptq-mse`), chosen on tune
ptq_observers = dict(weight=dict(type='mmddaq.MSEObserver'),
                     act=dict(type='mmddaq.PercentileObserver'))
# 1024 generator samples, not 256: on the digits tune split (3 seeds) W3A3
# 95.43 against 93.95 and W4A4 higher too, for +10 s (docs/benchmarks.md,
# Round 14)
post_training = dict(
    type='mmddaq.PostTrainingHook',
    samples=dict(type='mmddaq.AlgorithmSamples'),
    num_samples=1024,
    observers=dict(weight=dict(type='mmddaq.MSEObserver'),
                   act=dict(type='mmddaq.MSEObserver')),
    reconstruction=dict(type='mmddaq.BlockReconstruction', iters=200))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance')),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=40),
    post_training,
]
