# GDFQ-style: class-conditional generator trained with CE + BN statistics
# (uniform layer weights, no discrepancy discriminator), KD fine-tuning.
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(loss_weights=dict(ce=1., bns=0.1, dis=0., q_dis=0.))
train_cfg = dict(warmup_iters=50)  # then KD fine-tuning
custom_hooks = [
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=40),
]
