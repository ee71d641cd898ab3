# Data-free PTQ with range search: Gaussian calibration batches, MSE ranges
# for weights (per channel) and percentile ranges for activations (per
# tensor), the best pair on the tune split; no fine-tuning.
_base_ = './ptq_resnet18-w16_digits_w4a4.py'
custom_hooks = [
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.PostTrainingHook',
         samples=dict(type='mmddaq.GaussianSamples'),
         num_samples=50 * 64, batch_size=64,
         observers=dict(weight=dict(type='mmddaq.MSEObserver'),
                        act=dict(type='mmddaq.PercentileObserver')),
         reconstruction=None),
]
