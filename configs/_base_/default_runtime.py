# Runtime shared by every mmsora config: iteration-based logging and checkpoints,
# EMA of the weights (DiT keeps an EMA with decay 0.9999), RNG states saved with
# each checkpoint so --resume continues the exact same noise.
default_scope = 'mmsora'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=50000, max_keep_ckpts=3),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Skip NaN/inf steps, stop after 5 in a row, log grad_norm (docs/reliability.md).
    loss_guard=dict(type='LossGuardHook', max_consecutive=5),
    # Refuse --resume with another number of processes or batch size.
    resume_check=dict(type='ResumeCheckHook'),
)
# mmengine's EMA: averaged = (1 - momentum) * averaged + momentum * weights,
# so momentum=1e-4 is DiT's decay of 0.9999. Checkpoints hold the EMA weights in
# `state_dict` (what tools/infer.py loads) and the raw weights in `ema_state_dict`.
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
]

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    # tools/train.py switches this to gloo on machines without CUDA. timeout: seconds
    # a collective waits (torch's default for NCCL is 10 minutes): the samples drawn
    # during training (SampleVisualizationHook) are rank 0's alone, and the
    # other ranks wait in the next all-reduce meanwhile; a text model's first round
    # also loads its text encoder (T5-XXL) from disk, and 250 guided DDPM steps of an
    # XL video model can take longer than that on a 48 GB card.
    dist_cfg=dict(backend='nccl', timeout=3600),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends)
# Means over the last 50 steps. mmengine averages only names matching its pattern
# (loss, time, grad_norm): the loss terms (mse, vb) are added so they add up to it.
log_processor = dict(by_epoch=False, window_size=50,
                     mean_pattern=r'.*(loss|mse|vb|time|data_time|grad_norm).*')
log_level = 'INFO'
load_from = None
resume = False
# Each process draws its own timesteps and noise (seed + rank, as DiT's seed * world +
# rank); RNGStateHook keeps every process's RNG states for exact resume.
randomness = dict(seed=0, diff_rank_seed=True, deterministic=False)
