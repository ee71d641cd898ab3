# Data-free quantization of an mmdet detector, evaluated on COCO val2017.
# Child configs add an mmdet model base (e.g.
# 'mmdet::_base_/models/retinanet_r50_fpn.py') and build
# model = dict(type='mmddaq.DDAQ', architecture={{_base_.model}}, ...) from
# the shared pieces below.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
runner_type = 'mmddaq.DataFreeRunner'
# Distributed runs (tools/dist_train.sh, tools/slurm_train.sh): generator and
# quantized model train data-parallel; each rank draws its own noise.
model_wrapper_cfg = dict(type='mmddaq.DDAQDataParallel')
randomness = dict(seed=None, diff_rank_seed=True)

# generated images: the detector's normalised input space, 512x512
input_shape = (3, 512, 512)
generator = dict(
    type='mmddaq.Generator', img_size=512, num_classes=None, latent_dim=256,
    base_channels=128, num_upsamples=5)
loss_weights = dict(ce=0., bns=0.1, dis=1.0, kd=1.0, q_dis=1.0)

train_dataloader = None  # data-free: the generator makes every batch
train_cfg = dict(
    type='mmddaq.DataFreeTrainLoop',
    max_iters=20000,
    batch_size=8,
    warmup_iters=500,
    val_interval=5000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    constructor='mmddaq.SubmoduleOptimWrapperConstructor',
    generator=dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999))),
    quantized=dict(
        optimizer=dict(type='Adam', lr=1e-5),
        clip_grad=dict(max_norm=10, norm_type=2)))
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    # atomic writes; refuses NaN/Inf states (mmddaq/engine/hooks)
    checkpoint=dict(type='mmddaq.SafeCheckpointHook', by_epoch=False,
                    interval=5000, max_keep_ckpts=2, save_last=True),
    # random state in checkpoints: a resumed run repeats the same noise
    random_state=dict(type='mmddaq.RandomStateHook'),
    # missing validation images fail before training, not at validation
    eval_data=dict(type='mmddaq.EvalDataCheckHook'))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=2, num_batches=2,
                     num_probes=4)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=500),
    dict(type='mmddaq.GeneratedSamplesHook', interval=2000, num_samples=8),
]
