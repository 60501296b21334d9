# Stable Cascade video, Stage C lite: the released 1.03 B text-to-image prior
# (stabilityai/stable-cascade-prior, subfolder prior_lite; Pernias et al., "Würstchen",
# ICLR 2024) with a temporal attention layer after each of its 32 layers (+302 M,
# zero-initialised: the untrained model is the image prior frame by frame), trained
# on 16-frame clips in Stage C's 16x24x24 latent (1024x1024 frames after Stage B + A),
# conditioned on CLIP ViT-bigG tokens and pooled embedding, with Stage C's own
# continuous-time cosine schedule. docs/stable_cascade.md has the details.
#
# Sized for ONE 24 GB card (RTX 4090 / 3090): the spatial part is frozen (no gradients
# or optimizer state), only the 302 M temporal parameters train, every block is
# recomputed in the backward pass, bf16 autocast (--amp). Counted by
# tools/estimate_memory.py (--precision bf16): 11.50 GiB of tensors at one clip (fp32
# weights 4.97, AdamW 2.25, the step 4.29), 15.73 at two; measured on one H200 (Dec 4
# 2026, --measure cuda): 12.24 and 17.03 GiB allocated at the peak, 6-8% more. By the
# measured 4.8 GiB per clip, 3 clips come to ~21.8 GiB (not run): a 24 GB card holds
# them, though with less than 10% free. No EMA: an EMAHook copies all 1.33 B
# parameters (+4.97 GiB).
# docs/stable_cascade.md.
#   python tools/train.py \
#       configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py --amp \
#       --cfg-options train_dataloader.dataset.data_root=data/clips16_stage_c \
#       model.denoiser.pretrained_path=checkpoints/stable-cascade-prior
#   python tools/infer.py work_dirs/stable_cascade_video_lite_1xb1_100k_clips1024 \
#       --prompt "a red fox runs through snow" --out clips/ --gif
# Local folders (nothing is downloaded): checkpoints/stable-cascade-prior (the prior
# pipeline: prior_lite/, text_encoder/, tokenizer/) and checkpoints/stable-cascade (the
# decoder pipeline: decoder_lite/, vqgan/, scheduler/).
#
# Data: a packed latent store of Stage C latents (16x16x24x24 per clip) with CLIP
# tokens (77x1280), masks and pooled embeddings (1280). Stage C's EfficientNetV2-S
# image encoder is not in diffusers, so tools/extract_features.py cannot write the
# latents yet: plug an encoder into StableCascadeDecoder(encoder=...) (docs).
_base_ = ['../_base_/default_runtime.py']

num_frames = 16
model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='StableCascadeVideo',
        # StableCascadeUNet's prior_lite config (mmsora.models.denoisers.
        # stable_cascade_video.STAGE_C_LITE), written out so the file reads alone.
        unet=dict(
            in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64,
            patch_size=1, conditioning_dim=1536, block_out_channels=(1536, 1536),
            num_attention_heads=(24, 24), down_num_layers_per_block=(4, 12),
            up_num_layers_per_block=(12, 4), down_blocks_repeat_mappers=(1, 1),
            up_blocks_repeat_mappers=(1, 1),
            block_types_per_layer=(
                ('SDCascadeResBlock', 'SDCascadeTimestepBlock', 'SDCascadeAttnBlock'),
                ('SDCascadeResBlock', 'SDCascadeTimestepBlock', 'SDCascadeAttnBlock')),
            clip_text_in_channels=1280, clip_text_pooled_in_channels=1280,
            clip_image_in_channels=768, clip_seq=4, kernel_size=3, dropout=(0.1, 0.1),
            self_attn=True, timestep_conditioning_type=('sca', 'crp'),
            switch_level=(False,)),
        temporal_layers=('attn',),
        temporal_every=1,
        freeze_spatial=True,
        cond_dropout_prob=0.05,  # Stable Cascade's training drops 5% of captions
        pretrained_path='checkpoints/stable-cascade-prior',
        pretrained_subfolder='prior_lite',
        grad_checkpointing=True),
    # P2 weighting, as Stable Cascade's train_c.py without adaptive_loss_weight
    diffusion=dict(type='WuerstchenDiffusion', s=0.008, scaler=1.0, loss_weight='p2'),
    vae=dict(type='StableCascadeDecoder', pretrained_path='checkpoints/stable-cascade',
             decoder_subfolder='decoder_lite', num_steps=10, micro_batch_size=4),
    # CLIP ViT-bigG with projection, its last hidden states (before the final norm),
    # as StableCascadePriorPipeline encodes prompts; used by tools/infer.py --prompt.
    text_encoder=dict(type='HFTextEncoder', pretrained_path='checkpoints/stable-cascade-prior',
                      kind='clip_with_projection', hidden_layer=-1, max_length=77),
    latent_shape=(16, num_frames, 24, 24),
    num_classes=1,
)
# StableCascadePriorPipeline's defaults: 20 steps, guidance 4.
sample_cfg = dict(sampler='DDPMWuerstchenScheduler', num_steps=20, cfg_scale=4.0, fps=8)

data_root = 'data/clips16_stage_c'
train_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='PackedLatentDataset', data_root=data_root, sample_posterior=False,
                 random_flip=True),
)

# Temporal layers only (AnimateDiff / VideoLDM train them at 1e-4).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=1.0),
)
max_iters = 100000
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=1000),
    dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=1000),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=5000, max_keep_ckpts=3))
custom_hooks = [dict(type='RNGStateHook')]
