# DeepSpeed ZeRO-3 with parameters and optimizer states in CPU memory
# (xtuner's deepspeed_zero3_offload): the least GPU memory, the slowest steps.
_base_ = ['./deepspeed_zero3.py']

strategy = dict(config=dict(zero_optimization=dict(
    offload_optimizer=dict(device='cpu', pin_memory=True),
    offload_param=dict(device='cpu', pin_memory=True))))
