# FSDP (fsdp.py) computing in bf16: `tools/train.py CONFIG --fsdp fsdp_bf16` under
# torchrun. Each unit's weights are gathered in bf16 for its forward and backward from
# the float32 shards the optimizer updates (half the all-gather traffic and half the
# gathered weights' memory of fsdp.py); gradients are reduced in float32 (AdamW's
# update, the EMA and the checkpoints stay float32). The batch is not cast on its way
# in (cast_root_forward_inputs=False): noise, x_t and the loss stay float32 and the
# denoiser's inputs are cast to its weights' dtype, as under DeepSpeed's bf16. No
# --amp needed (with it, autocast runs on top). A GPU without bf16 (V100, T4) is
# refused: --fsdp --amp trains in fp16 with loss scaling there. See docs/distributed.md,
# "FSDP".
_base_ = ['./fsdp.py']
strategy = dict(model_wrapper=dict(mixed_precision=dict(
    param_dtype='bfloat16', reduce_dtype='float32', buffer_dtype='float32',
    cast_root_forward_inputs=False)))
