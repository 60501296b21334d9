# DeepSpeed ZeRO-3: parameters, gradients and optimizer states sharded
# (xtuner's deepspeed_zero3); checkpoints gather the 16-bit weights on save. An
# EMAHook becomes ShardedEMAHook: each process averages its own partitions.
_base_ = ['./deepspeed_zero1.py']

strategy = dict(config=dict(zero_optimization=dict(
    stage=3, stage3_gather_16bit_weights_on_model_save=True)))
