# DeepSpeed ZeRO-2 with the optimizer states (and step) in CPU memory
# (xtuner's deepspeed_zero2_offload): bigger models on one card, slower steps.
# The offloaded step runs DeepSpeed's CPU Adam, a C++ op it compiles on first use.
_base_ = ['./deepspeed_zero2.py']

strategy = dict(config=dict(zero_optimization=dict(
    offload_optimizer=dict(device='cpu', pin_memory=True))))
