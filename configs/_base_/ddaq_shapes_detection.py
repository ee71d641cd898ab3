# Data-free quantization of a small detector of the offline shapes testbed,
# evaluated on the shapes val split (the train split is never read). Child
# configs add a model base from ./models/ and build
# model = dict(type='mmddaq.DDAQ', architecture={{_base_.model}}, ...) from
# the shared pieces below. A few CPU minutes per run.
_base_ = [
    './datasets/shapes_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
runner_type = 'mmddaq.DataFreeRunner'
# Distributed runs: generator and quantized model train data-parallel; each
# rank draws its own noise.
model_wrapper_cfg = dict(type='mmddaq.DDAQDataParallel')
randomness = dict(seed=0, diff_rank_seed=True)

# generated images: the detector's normalised input space, 128x128
input_shape = (3, 128, 128)
generator = dict(
    type='mmddaq.Generator', img_size=128, num_classes=None, latent_dim=64,
    base_channels=64, num_upsamples=4)
loss_weights = dict(ce=0., bns=1.0, dis=1.0, kd=1.0, q_dis=1.0)

train_dataloader = None  # data-free: the generator makes every batch
# The generator alone is trained (D1 + D2, importance-weighted); block
# reconstruction on its samples then refines the quantized model (the digits
# tune split's choice; configs derived with `ddaq-kd` fine-tune with KD).
train_cfg = dict(
    type='mmddaq.DataFreeTrainLoop',
    max_iters=400,
    batch_size=8,
    warmup_iters=400,
    val_interval=200)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    constructor='mmddaq.SubmoduleOptimWrapperConstructor',
    generator=dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999))),
    quantized=dict(
        optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, nesterov=True,
                       weight_decay=1e-4),
        clip_grad=dict(max_norm=10, norm_type=2)))
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # atomic writes; refuses NaN/Inf states (mmddaq/engine/hooks)
    checkpoint=dict(type='mmddaq.SafeCheckpointHook', by_epoch=False,
                    interval=100000, save_last=True, max_keep_ckpts=2),
    # random state in checkpoints: a resumed run repeats the same noise
    random_state=dict(type='mmddaq.RandomStateHook'),
    # missing validation images fail before training, not at validation
    eval_data=dict(type='mmddaq.EvalDataCheckHook'))
# After training: 128 generator samples, MSE ranges, block reconstruction
# (the recipe chosen on the digits tune split; fewer steps per block on a
# detector's ~40 units to stay within CPU minutes).
post_training = dict(
    type='mmddaq.PostTrainingHook',
    samples=dict(type='mmddaq.AlgorithmSamples'),
    num_samples=128,
    batch_size=8,
    # chosen per role on the shapes tune split with W4A4 PTQ (seed 0):
    # MSE weights + min-max activations 0.643 mAP, MSE/MSE 0.624,
    # MSE/percentile 0.632, min-max/min-max 0.634 (docs/benchmarks.md)
    observers=dict(weight=dict(type='mmddaq.MSEObserver'),
                   act=dict(type='mmddaq.EMAMinMaxObserver')),
    reconstruction=dict(
        type='mmddaq.BlockReconstruction', iters=100, batch_size=8))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=16),
    post_training,
]
