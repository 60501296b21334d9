# configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py (text-conditioned STDiT-XL/2,
# 16x256x256 clips, T5 tokens; 977M trainable parameters with the cross-attention)
# sized for 8 x 24 GB cards (RTX 4090 / 3090). With DDP it does not fit a 24 GB card
# even at 1 clip per GPU (22.2 GiB: fp32 weights, EMA, AdamW's moments and DDP's
# buckets); DeepSpeed ZeRO-2 in bf16 (xtuner's deepspeed_zero2) keeps the bf16 module
# and shards the fp32 master weights, the moments, the gradients and the fp32 EMA over
# the 8 GPUs, and every block is recomputed in the backward pass (about 4/3 of the
# step's compute). Estimated peak of tensors per GPU (tools/estimate_memory.py --gpus 8,
# Dec 1 2026; a count on fake tensors whose DeepSpeed part was checked against real
# CPU runs, not yet measured on a card): 8.3 GiB at 5 clips, of which 1.9 GiB are
# DeepSpeed's gradient buckets; the largest batch per GPU that leaves 10% of the card
# free: 28. Every 2nd block recomputed needs 25.5 GiB at 5 clips. Figures:
# docs/distributed.md.
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256_24gb.py 8
_base_ = ['./video_dit_xl2_8xb5_1m_t5_clips256.py', '../_base_/strategies/deepspeed_zero2.py']

model = dict(denoiser=dict(grad_checkpointing=True))
# bf16 (every card above has it): DeepSpeed trains the module in it.
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
