# configs/dit_xl2_video.py (VideoDiT-XL/2 on 16x256x256 UCF-101 clips, Latte's recipe
# of 5 clips per GPU) sized for 24 GB cards (RTX 4090 / 3090): bf16 autocast over fp32
# weights, and every block is recomputed in the backward pass (about 4/3 of the step's
# compute).
# Estimated peak of tensors per GPU (tools/estimate_memory.py, Dec 3 2026; a count on
# fake tensors): 14.1 GiB on one GPU, 16.6 GiB with DDP. Measured on one H200 capped at
# 23.5 GiB (Dec 4 2026, tools/benchmark.py --memory-budget 23.5): 283.2 ms per step of
# 5 clips, 14.25 GiB allocated at the peak. The largest batch per GPU that leaves 10%
# of the card free: 15 on one GPU, 12 with DDP (estimated).
# Figures and the other cards' presets: docs/distributed.md.
#   python tools/train.py configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py 8
_base_ = ['../dit_xl2_video.py']

model = dict(denoiser=dict(grad_checkpointing=True))
# What tools/train.py --amp sets on a GPU with bf16 (every card above has it).
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
