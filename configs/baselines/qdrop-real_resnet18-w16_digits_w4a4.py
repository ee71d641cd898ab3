# Upper bound, NOT data-free: the DDAQ config's range search and block
# reconstruction (AdaRound, LSQ, QDrop) on 256 real training images.
_base_ = './ptq_resnet18-w16_digits_w4a4.py'
custom_hooks = [
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(
        type='mmddaq.PostTrainingHook',
        samples=dict(
            type='mmddaq.RealSamples',
            dataloader={{_base_.real_calib_dataloader}}),
        num_samples=256,
        observers={{_base_.post_training.observers}},
        reconstruction={{_base_.post_training.reconstruction}}),
]
