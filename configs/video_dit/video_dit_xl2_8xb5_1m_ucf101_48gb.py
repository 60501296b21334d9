# configs/dit_xl2_video.py (VideoDiT-XL/2 on 16x256x256 UCF-101 clips, Latte's recipe
# of 5 clips per GPU) sized for 48 GB cards (RTX A6000 / L40S): bf16 autocast over fp32
# weights, and every 2nd block (0, 2, 4, ...) recomputed in the backward pass (about
# 7/6 of the step's compute).
# Measured on one H200 (Dec 4 2026, docs/benchmarks.md "GPU"): 240.8 ms per step of 5
# clips at 27.7 GiB peak allocated (27.57 estimated by tools/estimate_memory.py; 30.1
# with DDP's buckets). Selective checkpointing (this preset from Dec 3 to Dec 4 2026)
# keeps less (26.4 GiB) but its step took 310.8 ms there, slower even than recomputing
# every block (283.2 ms, the 24 GB preset): it had cost 4% of the step on the CPU.
# The largest batch per GPU that leaves 10% of the card free: 9 on one GPU or with DDP.
# Figures and the other cards' presets: docs/distributed.md.
#   python tools/train.py configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_48gb.py
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_48gb.py 8
_base_ = ['../dit_xl2_video.py']

model = dict(denoiser=dict(grad_checkpointing=2))
# What tools/train.py --amp sets on a GPU with bf16 (every card above has it).
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
