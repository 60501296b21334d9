# CPU-sized Stable Cascade video: a tiny Stage C (StableCascadeUNet, 2 levels of 32
# channels) with temporal attention + temporal convolution after each layer, trained
# from scratch on a toy packed latent store of 4-frame 16x4x4 Stage C latents with tiny
# CLIP text embeddings, decoded by a tiny Stage B + Stage A. It exercises the whole
# path (store -> WuerstchenDiffusion loss -> DDPMWuerstchenScheduler with guidance ->
# Stage B + A per frame -> mp4) in about a minute on 2 cores; it generates nothing
# meaningful. tools/make_tiny_stable_cascade.py makes the folders it reads (random tiny
# CLIP and Stage B/A in local folders, the toy store; tests/test_models/
# test_stable_cascade_e2e.py does the same):
#   python tools/make_tiny_stable_cascade.py
#   python tools/train.py configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py
#   python tools/infer.py work_dirs/stable_cascade_video_tiny_1xb2_60_toy \
#       --prompt "a red disk" "a blue ring" --out clips/ --steps 4 --cfg-scale 2
_base_ = ['../_base_/default_runtime.py']

num_frames = 4
model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='StableCascadeVideo',
        unet=dict(
            in_channels=16, out_channels=16, timestep_ratio_embedding_dim=16,
            patch_size=1, conditioning_dim=32, block_out_channels=(32, 32),
            num_attention_heads=(2, 2), down_num_layers_per_block=(1, 1),
            up_num_layers_per_block=(1, 1), down_blocks_repeat_mappers=(1, 1),
            up_blocks_repeat_mappers=(1, 1),
            block_types_per_layer=(
                ('SDCascadeResBlock', 'SDCascadeTimestepBlock', 'SDCascadeAttnBlock'),
                ('SDCascadeResBlock', 'SDCascadeTimestepBlock', 'SDCascadeAttnBlock')),
            # a tiny CLIP with projection: hidden 32, projection 16
            clip_text_in_channels=32, clip_text_pooled_in_channels=16,
            clip_image_in_channels=8, clip_seq=2, kernel_size=3, dropout=(0.0, 0.0),
            self_attn=True, timestep_conditioning_type=('sca', 'crp'),
            switch_level=(False,)),
        temporal_layers=('attn', 'conv'),
        freeze_spatial=False,
        cond_dropout_prob=0.1),
    diffusion=dict(type='WuerstchenDiffusion'),
    # Stage B latents 2x the Stage C side (the released models: 10.67x), 4x pixels.
    vae=dict(type='StableCascadeDecoder', pretrained_path='checkpoints/stable-cascade-tiny',
             decoder_subfolder='decoder_lite', latent_dim_scale=2.0, num_steps=2,
             micro_batch_size=4),
    text_encoder=dict(type='HFTextEncoder', pretrained_path='checkpoints/clip-tiny',
                      kind='clip_with_projection', hidden_layer=-1, max_length=8),
    latent_shape=(16, num_frames, 4, 4),
    num_classes=1,
)
sample_cfg = dict(sampler='DDPMWuerstchenScheduler', num_steps=4, cfg_scale=2.0, fps=4)

data_root = 'data/stage_c_toy'
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='PackedLatentDataset', data_root=data_root, sample_posterior=False,
                 random_flip=False),
)

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.0),
    clip_grad=dict(max_norm=1.0),
)
max_iters = 60
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=1),
)
custom_hooks = [
    dict(type='EMAHook', momentum=0.1, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
]
