# DDAQ W4A4 of the small shapes RetinaNet (every layer at 4 bits), offline:
#   python tools/make_shapes.py --out data/shapes
#   python tools/train.py configs/fp_retinanet_r18-w16_shapes.py
#   python tools/train.py configs/ddaq_retinanet_r18-w16_shapes_w4a4.py
# Only the val split is used, for evaluation.
_base_ = './fp_retinanet_r18-w16_shapes.py'
runner_type = 'mmddaq.DataFreeRunner'
fp_checkpoint = 'work_dirs/fp_retinanet_r18-w16_shapes/epoch_30.pth'
model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    architecture={{_base_.model}},
    fp_checkpoint=fp_checkpoint,
    input_shape=(3, 128, 128),
    quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=4, a_bits=4),
    generator=dict(
        type='mmddaq.Generator', img_size=128, num_classes=None,
        latent_dim=64, base_channels=64, num_upsamples=4),
    adapter=dict(type='mmddaq.OneStageDetectorAdapter'),
    loss_weights=dict(ce=0., bns=1.0, dis=1.0, kd=1.0, q_dis=1.0))
train_dataloader = None  # data-free
train_cfg = dict(
    _delete_=True,
    type='mmddaq.DataFreeTrainLoop',
    max_iters=400,
    batch_size=8,
    warmup_iters=50,
    val_interval=200)
optim_wrapper = dict(
    _delete_=True,
    constructor='mmddaq.SubmoduleOptimWrapperConstructor',
    generator=dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999))),
    quantized=dict(
        optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, nesterov=True,
                       weight_decay=1e-4),
        clip_grad=dict(max_norm=10, norm_type=2)))
param_scheduler = None
log_processor = dict(by_epoch=False)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=100000,
                    save_last=True, max_keep_ckpts=2))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=16),
]
