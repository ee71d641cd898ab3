# Genie-style: a generator trained on BN statistics (+ CE) alone, the
# quantized model never fine-tuned; then MSE ranges and block
# reconstruction on the DDAQ config's pool of generator samples (1024).
_base_ = '../ddaq_resnet18-w16_digits_w4a4.py'
model = dict(loss_weights=dict(ce=1., bns=0.1, dis=0., q_dis=0.))
train_cfg = dict(warmup_iters=400)  # = max_iters: generator only
custom_hooks = [
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=50),
    dict(type='mmddaq.GeneratedSamplesHook', interval=200, num_samples=40),
    {{_base_.post_training}},
]
