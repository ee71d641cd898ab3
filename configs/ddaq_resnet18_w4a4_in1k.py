# DDAQ W4A4 of mmpretrain's ResNet-18 on ImageNet (all layers 4 bits, the image
# input at 8: ModelQuantizer input_bits, the GDFQ convention).
# Needs: the ImageNet val set for evaluation only (set data_root below or via
# --cfg-options), a GPU (~10 GB at batch 64), and the official FP checkpoint
# (downloaded on first use; point fp_checkpoint at a local copy offline).
#   python tools/train.py configs/ddaq_resnet18_w4a4_in1k.py
#   bash tools/dist_train.sh configs/ddaq_resnet18_w4a4_in1k.py 8
_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
runner_type = 'mmddaq.DataFreeRunner'

data_root = 'data/imagenet'
fp_checkpoint = ('https://download.openmmlab.com/mmclassification/v0/resnet/'
                 'resnet18_8xb32_in1k_20210831-fbbb1da6.pth')

model = dict(
    _delete_=True,
    type='mmddaq.DDAQ',
    architecture={{_base_.model}},
    data_preprocessor={{_base_.data_preprocessor}},
    fp_checkpoint=fp_checkpoint,
    input_shape=(3, 224, 224),
    quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=4, a_bits=4),
    generator=dict(
        type='mmddaq.Generator', img_size=224, num_classes=1000,
        latent_dim=256, base_channels=128, num_upsamples=3),
    adapter=dict(type='mmddaq.ClassifierAdapter', kd_temperature=1.0),
    loss_weights=dict(ce=1.0, bns=0.1, dis=1.0, kd=1.0, q_dis=1.0))

optim_wrapper = dict(
    _delete_=True,
    constructor='mmddaq.SubmoduleOptimWrapperConstructor',
    generator=dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999))),
    quantized=dict(optimizer=dict(type='SGD', lr=1e-4, momentum=0.9,
                                  nesterov=True, weight_decay=1e-4)))
param_scheduler = None

train_dataloader = None  # data-free
train_cfg = dict(
    _delete_=True,
    type='mmddaq.DataFreeTrainLoop',
    max_iters=40000,
    batch_size=32,
    warmup_iters=1000,
    val_interval=5000)
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='mmddaq.SafeCheckpointHook', by_epoch=False,
                    interval=5000, max_keep_ckpts=2, save_last=True),
    random_state=dict(type='mmddaq.RandomStateHook'),
    eval_data=dict(type='mmddaq.EvalDataCheckHook'))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=16)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=1000),
    dict(type='mmddaq.GeneratedSamplesHook', interval=2000, num_samples=32),
]
auto_scale_lr = None
