# DeepSpeed ZeRO-2: optimizer states and gradients sharded (xtuner's deepspeed_zero2).
# `tools/train.py CONFIG --deepspeed deepspeed_zero2`.
_base_ = ['./deepspeed_zero1.py']

strategy = dict(config=dict(zero_optimization=dict(stage=2)))
