# The paper's DDAQ recipe: generator with D1 + D2 + importance, min-max
# ranges, KD fine-tuning of the quantized model; no post-training refinement.
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
# the base's loss weights for KD fine-tuning (`kd_loss_weights`: D1 at 1.0)
model = dict(loss_weights={{_base_.kd_loss_weights}})
# then KD fine-tuning, the generator updated every other iteration
train_cfg = dict(warmup_iters=50, generator_interval=2)
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance')),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=40),
]
