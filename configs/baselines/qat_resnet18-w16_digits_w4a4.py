# Upper bound, NOT data-free: KD fine-tuning of the quantized model on the
# real train split (ranges calibrated on real batches too): the same loop
# as every method, with real images as the sample source.
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(
    generator=None,
    sample_source=dict(
        type='mmddaq.RealSamples',
        dataloader=dict(
            batch_size=64,
            num_workers=0,
            dataset=dict(
                type='mmddaq.DigitsDataset',
                split='train',
                pipeline=[
                    dict(type='RandomCrop', crop_size=32, padding=2),
                    dict(type='PackInputs')
                ]),
            sampler=dict(type='DefaultSampler', shuffle=True))),
    loss_weights=dict(ce=0., bns=0., dis=0., q_dis=0.))
train_cfg = dict(warmup_iters=50)
custom_hooks = [
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
]
