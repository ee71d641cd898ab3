# The data-free DDAQ schedule of an mmdet detector, with no dataset and no
# model: compose it with an mmdet model base and your own dataset base,
# from any project (mmddaq's configs ship in the installed package):
#   _base_ = ['mmddaq::_base_/ddaq_detection.py',
#             'mmdet::_base_/models/retinanet_r50_fpn.py',
#             './my_dataset.py']  # test_dataloader / test_evaluator
#   #   model = dict(_delete_=True, type='mmddaq.DDAQ',
#                architecture={{_base_.model}}, fp_checkpoint='fp.pth',
#                input_shape={{_base_.input_shape}},
#                quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=4,
#                               a_bits=4),
#                generator={{_base_.generator}},
#                adapter=dict(type='mmddaq.OneStageDetectorAdapter'),
#                loss_weights={{_base_.loss_weights}})
# `train_dataloader = None` belongs in your config (the dataset base is a
# sibling here): the training split is then never read, and the test split
# only evaluates.
_base_ = 'mmdet::_base_/default_runtime.py'
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
runner_type = 'mmddaq.DataFreeRunner'
# Distributed runs (tools/dist_train.sh, tools/slurm_train.sh): generator and
# quantized model train data-parallel; each rank draws its own noise.
model_wrapper_cfg = dict(type='mmddaq.DDAQDataParallel')
randomness = dict(seed=None, diff_rank_seed=True)

# generated images: the detector's normalised input space, 512x512
input_shape = (3, 512, 512)
generator = dict(
    type='mmddaq.Generator', img_size=512, num_classes=None, latent_dim=256,
    base_channels=128, num_upsamples=5)
loss_weights = dict(ce=0., bns=0.1, dis=1.0, kd=1.0, q_dis=1.0)

# The recipe chosen on the frozen-BN RetinaNet's tune split
# (docs/benchmarks.md, Round 7): the generator alone is trained (D1 + D2,
# importance-weighted; the quantized model only answers D2), then the
# PostTrainingHook below calibrates activation ranges on Gaussian samples and
# block-reconstructs the quantized model on a pool of the generator's
# samples, each position weighted by where the FP detector sees objects.
# The method `ddaq-kd` (tools/benchmark.py --methods) fine-tunes with KD in
# the loop instead. Iteration counts are scaled up from the offline suites,
# not tuned on COCO.
train_cfg = dict(
    type='mmddaq.DataFreeTrainLoop',
    max_iters=20000,
    batch_size=8,
    warmup_iters=20000,
    val_interval=20000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    constructor='mmddaq.SubmoduleOptimWrapperConstructor',
    generator=dict(optimizer=dict(type='Adam', lr=1e-3, betas=(0.5, 0.999))),
    quantized=dict(
        optimizer=dict(type='Adam', lr=1e-5),
        clip_grad=dict(max_norm=10, norm_type=2)))
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    # atomic writes; refuses NaN/Inf states (mmddaq/engine/hooks)
    checkpoint=dict(type='mmddaq.SafeCheckpointHook', by_epoch=False,
                    interval=5000, max_keep_ckpts=2, save_last=True),
    # random state in checkpoints: a resumed run repeats the same noise
    random_state=dict(type='mmddaq.RandomStateHook'),
    # missing validation images fail before training, not at validation
    eval_data=dict(type='mmddaq.EvalDataCheckHook'))
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=2, num_batches=2,
                     num_probes=4)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=500),
    dict(type='mmddaq.GeneratedSamplesHook', interval=2000, num_samples=8),
    dict(type='mmddaq.PostTrainingHook',
         samples=dict(type='mmddaq.AlgorithmSamples'),
         calibration_samples=dict(type='mmddaq.GaussianSamples'),
         num_samples=1024,
         batch_size=8,
         observers=dict(weight=dict(type='mmddaq.MSEObserver'),
                        act=dict(type='mmddaq.EMAMinMaxObserver')),
         # per-channel output mean shifts removed on the generator's pool
         # before reconstruction (frozen-BN RetinaNet, Round 16)
         bias_correction=True,
         # the offline suites' learning rates (Round 10: 300 steps, rounding
         # 0.05, LSQ steps 1e-3) scaled by 300 / 2000 steps, so each
         # variable can move as far in total; not measured on COCO
         reconstruction=dict(
             type='mmddaq.BlockReconstruction', iters=2000, batch_size=8,
             round_lr=7.5e-3, act_lr=1.5e-4, focus=0.05),
         # then the activation steps of the whole model against the
         # detection KD (frozen-BN RetinaNet, Round 17; not measured on COCO)
         output_tuning=dict(type='mmddaq.OutputTuning', iters=1000,
                            act_lr=2e-4)),
]
