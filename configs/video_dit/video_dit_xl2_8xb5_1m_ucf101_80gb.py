# configs/dit_xl2_video.py (VideoDiT-XL/2 on 16x256x256 UCF-101 clips, Latte's recipe
# of 5 clips per GPU) sized for 80 GB cards (A100 / H100 80GB): bf16 autocast over fp32
# weights, and no block is recomputed.
# Estimated peak of tensors per GPU (tools/estimate_memory.py, Dec 3 2026; a count on
# fake tensors): 41.3 GiB on one GPU, 43.8 GiB with DDP; the allocator's peak of the
# same step on one H200 (Dec 4 2026, --measure cuda): 41.59 GiB on one GPU. The
# largest batch per GPU that leaves 10% of the card free: 10 on one GPU, 9 with DDP.
# Figures and the other cards' presets: docs/distributed.md.
#   python tools/train.py configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_80gb.py
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_80gb.py 8
_base_ = ['../dit_xl2_video.py']

model = dict(denoiser=dict(grad_checkpointing=False))
# What tools/train.py --amp sets on a GPU with bf16 (every card above has it).
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
