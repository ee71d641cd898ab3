# DDAQ with every layer equally important (no importance prior).
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='UniformImportance')),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=40),
    {{_base_.post_training}},
]
