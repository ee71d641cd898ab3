# Naive data-free PTQ: activation ranges calibrated on Gaussian noise in the
# normalised input space, weights min-max; no fine-tuning.
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(
    sample_source='gaussian',
    generator=None,
    loss_weights=dict(ce=0., bns=0., dis=0., q_dis=0.))
calib_iters = 50
train_cfg = dict(max_iters=calib_iters, warmup_iters=calib_iters,
                 val_interval=calib_iters)
custom_hooks = [
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=calib_iters)
]
