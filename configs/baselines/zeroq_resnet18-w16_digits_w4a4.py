# ZeroQ-style: a pool of inputs optimised to match the FP model's BN
# statistics ("distilled data"), then PTQ calibration on it; no fine-tuning.
_base_ = './ptq_resnet18-w16_digits_w4a4.py'
model = dict(sample_source='pool')
custom_hooks = [
    dict(type='mmddaq.DistilledSamplesHook', num_samples=256, iters=200,
         lr=0.1),
    dict(type='mmddaq.ActivationCalibrationHook',
         calib_iters={{_base_.calib_iters}}),
]
