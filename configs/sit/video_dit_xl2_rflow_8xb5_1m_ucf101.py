# VideoDiT-XL/2 (Latte's interleaved blocks, configs/_base_/models/video_dit_xl2.py)
# trained with rectified flow instead of DiT's Gaussian diffusion: the Linear path with
# velocity prediction (Liu et al. 2023) and logit-normal training times (SD3, Esser et
# al. 2024: the noise level is sigmoid(N(0, 1)); Open-Sora 1.2 trains video this way,
# and also shifts the times by resolution and length (use_timestep_transform: here
# model.diffusion.time_shift, 1 by default; its rule, open_sora_time_shift, has no value
# for 16-frame clips, docs/sit.md) and samples 30 steps at guidance 7: neither is done
# here).
# Otherwise the recipe of configs/dit_xl2_video.py: UCF-101 16x256x256 SD-VAE latents,
# 8 GPUs x 5 clips, AdamW 1e-4 constant, EMA 0.9999.
#   bash tools/dist_train.sh configs/sit/video_dit_xl2_rflow_8xb5_1m_ucf101.py 8 --amp
#   python tools/infer.py work_dirs/video_dit_xl2_rflow_8xb5_1m_ucf101 --labels 0 10 \
#       --out ucf/ --sampler FlowMatchEulerDiscreteScheduler --steps 30
# timestep_convention='dit' feeds the denoiser 1000 * (1 - t), the scale and direction
# of DiT's timesteps (1000 = noise), so an image DiT inflated with --load-from starts
# with a time embedding that means what it meant in DiT (see configs/dit_xl2_video.py
# for the depth and class-table settings that exact inflation needs).
_base_ = [
    '../_base_/models/video_dit_xl2.py',
    '../_base_/datasets/ucf101_16x256_latents.py',
    '../_base_/default_runtime.py',
]

model = dict(
    denoiser=dict(learn_sigma=False),
    # _delete_: the base model's GaussianDiffusion keys (num_timesteps, learn_sigma)
    # mean nothing to Transport.
    diffusion=dict(_delete_=True, type='Transport', path='Linear', prediction='velocity',
                   time_dist='logit_normal', logit_mean=0.0, logit_std=1.0,
                   timestep_convention='dit'),
)
# Euler on the flow ODE: 50 steps (the first-order sampler rectified flow is made for).
sample_cfg = dict(sampler='ode_euler', num_steps=50, cfg_scale=4.0, fps=8)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999)),
)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000000)
