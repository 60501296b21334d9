# configs/dit_xl2_video.py (VideoDiT-XL/2 on 16x256x256 UCF-101 clips, Latte's recipe
# of 5 clips per GPU) sized for 48 GB cards (RTX A6000 / L40S): bf16 autocast over fp32
# weights, and selective activation checkpointing: every block keeps its products' and
# attention's outputs and recomputes its elementwise ops (norms, modulation, GELU) in
# the backward pass; no product is computed twice. It keeps less than recomputing every
# 2nd block (the preset until Dec 3 2026: 30.1 GiB with DDP, about 7/6 of the step's
# compute) and cost 4% of the step against 12% for every 2nd block on the CPU
# (DiT-S/2, docs/benchmarks.md); a GPU's figure is still to measure.
# Estimated peak of tensors per GPU (tools/estimate_memory.py, Dec 3 2026; a count on
# fake tensors, not yet measured on a card): 26.3 GiB on one GPU, 28.8 GiB with DDP. The
# largest batch per GPU that leaves 10% of the card free: 10 on one GPU, 9 with DDP.
# Figures and the other cards' presets: docs/distributed.md.
#   python tools/train.py configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_48gb.py
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_48gb.py 8
_base_ = ['../dit_xl2_video.py']

model = dict(denoiser=dict(grad_checkpointing='selective'))
# What tools/train.py --amp sets on a GPU with bf16 (every card above has it).
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
