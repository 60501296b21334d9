# The SiT demo: configs/dit/dit_tiny2_1xb32_1500_shapes16.py (a tiny DiT on four
# classes of 16x16 coloured shapes generated at run time, pixel space, 1500 steps on
# CPU) trained as SiT instead: the Linear interpolant (rectified flow) with velocity
# prediction, SiT's uniform t, and no learned sigma. Only the objective and sampler
# change; the denoiser, data and schedule are the DiT demo's.
#   python tools/train.py configs/sit/sit_tiny2_1xb32_1500_shapes16.py
#   python tools/infer.py work_dirs/sit_tiny2_1xb32_1500_shapes16 --out sit_demo.png
# Measured figures (time, 1-NN class agreement) are in docs/sit.md.
_base_ = ['../_base_/default_runtime.py']

model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='DiT', input_size=16, patch_size=2, in_channels=3, hidden_size=128,
        depth=4, num_heads=4, mlp_ratio=4.0, class_dropout_prob=0.1,
        num_classes=4, learn_sigma=False),
    diffusion=dict(type='Transport', path='Linear', prediction='velocity'),
    vae=None,
    latent_shape=(3, 16, 16),
    num_classes=4,
)
# Heun's ODE sampler: 25 steps = 50 model evaluations, as the DiT demo's 50 DDIM steps.
sample_cfg = dict(sampler='ode_heun', num_steps=25, cfg_scale=2.0)

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
# A short run needs a faster EMA than SiT's 0.9999.
custom_hooks = [
    dict(type='EMAHook', momentum=0.01, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
]
