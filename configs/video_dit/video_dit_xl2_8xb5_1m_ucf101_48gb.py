# configs/dit_xl2_video.py (VideoDiT-XL/2 on 16x256x256 UCF-101 clips, Latte's recipe
# of 5 clips per GPU) sized for 48 GB cards (RTX A6000 / L40S): bf16 autocast over fp32
# weights, and every 2nd block is recomputed in the backward pass (about 7/6 of the
# step's compute).
# Estimated peak of tensors per GPU (tools/estimate_memory.py, Dec 3 2026; a count on
# fake tensors, not yet measured on a card): 27.6 GiB on one GPU, 30.1 GiB with DDP. The
# largest batch per GPU that leaves 10% of the card free: 9 on one GPU, 9 with DDP.
# Figures and the other cards' presets: docs/distributed.md.
#   python tools/train.py configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_48gb.py
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_48gb.py 8
_base_ = ['../dit_xl2_video.py']

model = dict(denoiser=dict(grad_checkpointing=2))
# What tools/train.py --amp sets on a GPU with bf16 (every card above has it).
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
