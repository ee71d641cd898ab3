# What every data-free quantization config shares: the data-free runner,
# iteration-based logging and checkpointing. Classification configs set
# `train_dataloader = None` after their dataset base.
_base_ = 'mmpretrain::_base_/default_runtime.py'
custom_imports = dict(imports=['mmddaq'], allow_failed_imports=False)
runner_type = 'mmddaq.DataFreeRunner'
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # atomic writes; refuses NaN/Inf states (mmddaq/engine/hooks)
    checkpoint=dict(
        type='mmddaq.SafeCheckpointHook', by_epoch=False, interval=100000,
        save_last=True, max_keep_ckpts=2),
    # random state in checkpoints: a resumed run repeats the same noise
    random_state=dict(type='mmddaq.RandomStateHook'),
    # missing validation images fail before training, not at validation
    eval_data=dict(type='mmddaq.EvalDataCheckHook'))
randomness = dict(seed=0, deterministic=False, diff_rank_seed=True)
# Distributed runs (tools/dist_train.sh, --launcher pytorch/slurm): the
# generator and the quantized model train data-parallel, each rank draws its
# own noise (seed + rank), so a step sees world_size * batch_size samples.
model_wrapper_cfg = dict(type='mmddaq.DDAQDataParallel')
