# The image demo (the README's main demo is its video twin, configs/video_dit/
# video_dit_tiny2_1xb8_1500_moving_shapes16.py): a tiny DiT (patch 2, 4 blocks, hidden
# 128) learns four classes of coloured shapes (16x16 pictures generated at run time;
# nothing downloaded) in a few minutes on 2 CPU cores. Pixel space: no VAE, the pictures are the "latents".
#   python tools/train.py configs/dit/dit_tiny2_1xb32_1500_shapes16.py
#   python tools/infer.py work_dirs/dit_tiny2_1xb32_1500_shapes16 --out demo.png
# Differences from DiT's ImageNet recipe, each measured on this task: the cosine noise
# schedule (IDDPM's; the linear one wastes most steps on pure noise at 16x16 and gave
# visibly worse shapes), lr 2e-3 with warm-up and cosine decay (1e-3 learned the
# colours but not the shapes in the same 1500 steps), a fast EMA, DDIM sampling.
_base_ = ['../_base_/default_runtime.py']

model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='DiT', input_size=16, patch_size=2, in_channels=3, hidden_size=128,
        depth=4, num_heads=4, mlp_ratio=4.0, class_dropout_prob=0.1,
        num_classes=4, learn_sigma=True),
    diffusion=dict(type='GaussianDiffusion', num_timesteps=1000, learn_sigma=True,
                   beta_schedule='squaredcos_cap_v2'),
    vae=None,
    latent_shape=(3, 16, 16),
    num_classes=4,
)
sample_cfg = dict(sampler='ddim', num_steps=50, cfg_scale=2.0)

train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='SyntheticShapesDataset', num_samples=2048, size=16,
                 num_classes=4, seed=0),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.0),
    clip_grad=dict(max_norm=1.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=1500, eta_min=1e-5),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1500)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=500, max_keep_ckpts=2),
)
# A short run needs a faster EMA than DiT's 0.9999.
custom_hooks = [
    dict(type='EMAHook', momentum=0.01, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
]
