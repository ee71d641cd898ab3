# ZeroQ-style: a pool of inputs optimised to match the FP model's BN
# statistics ("distilled data"), then PTQ calibration on it; no fine-tuning.
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(
    sample_source='pool',
    generator=None,
    loss_weights=dict(ce=0., bns=0., dis=0., q_dis=0.))
calib_iters = 50
train_cfg = dict(max_iters=calib_iters, warmup_iters=calib_iters,
                 val_interval=calib_iters)
custom_hooks = [
    dict(type='mmddaq.DistilledSamplesHook', num_samples=256, iters=200,
         lr=0.1),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=calib_iters),
]
