# PyTorch FSDP (fully sharded data parallel) through mmengine's FSDPStrategy, the
# alternative to DeepSpeed ZeRO-3: `tools/train.py CONFIG --fsdp` under torchrun.
# Each transformer block is its own FSDP unit; checkpoints hold the full state dict
# (gathered on rank 0), so tools/infer.py and --resume read them as usual. --fsdp
# also keeps the EMA sharded (ShardedEMAHook) and clips by the whole gradient's norm
# (FSDPGradClipHook); without CUDA it runs on CPU processes (docs/distributed.md).
# backward_prefetch: torch's default, gathering the next unit while this one's
# gradients are computed; mmengine's wrapper passes None (no prefetch) unless told.
strategy = dict(
    type='FSDPStrategy',
    model_wrapper=dict(
        type='MMFullyShardedDataParallel',
        auto_wrap_policy=dict(type='mmsora.transformer_block_wrap_policy'),
        backward_prefetch='BACKWARD_PRE'),
    state_dict_cfg='full')
