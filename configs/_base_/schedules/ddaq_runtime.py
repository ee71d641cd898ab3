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
    checkpoint=dict(
        type='CheckpointHook', by_epoch=False, interval=100000,
        save_last=True, max_keep_ckpts=2))
randomness = dict(seed=0, deterministic=False)
