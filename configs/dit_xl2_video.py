# VideoDiT-XL/2 ("Latte-XL/2", Ma et al. 2024, https://arxiv.org/abs/2401.03048):
# DiT-XL/2 widths with Latte's interleaved spatial / temporal blocks (depth 28 = 14 +
# 14), 16-frame 256x256 clips as SD-VAE latents (4x16x32x32), class-conditional on
# UCF-101 (101 classes), DiT's Gaussian diffusion, AdamW 1e-4 without weight decay,
# EMA 0.9999.
#
# Latte's UCF-101 recipe (its configs/ucf101/ucf101_train.yaml): 5 clips per GPU, lr
# 1e-4 constant, EMA 0.9999, fp32 (mixed_precision: False), gradient norm clipped at 0.1
# from iteration 100k (GradClipFromHook below), up to 1M iterations, 16 frames every
# 3rd; sampling (ucf101_sample.yaml): 250 DDPM steps, guidance 7.0 on all 4 latent
# channels (_base_/models/video_dit_xl2.py). Ours: 8 GPUs (a global batch of 40; Latte's
# script runs 2), --amp (bf16) for the memory, and fixed clips from the latent store
# (extract_features takes each video's middle 16 frames once, or K windows spread over
# it with --clips-per-video K; Latte crops a new window each time it reads a video).
#   bash tools/dist_train.sh configs/dit_xl2_video.py 8 --amp \
#       --cfg-options train_dataloader.dataset.data_root=/data/ucf101_16x256_latents
#   python tools/infer.py work_dirs/dit_xl2_video --labels 0 10 20 30 --out ucf/ --gif
# Memory (estimated by tools/estimate_memory.py; 41.59 GiB measured on one H200): with
# --amp (bf16) a batch of 5 peaks at 41.3 GiB per GPU (43.8 with DDP), so an 80 GB
# card; configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_{24,48,80}gb.py add bf16 and
# activation checkpointing (every block / every 2nd / none) for 24 / 48 / 80 GB cards.
#
# Starting from an image DiT (Latte initialises its spatial blocks from DiT-XL/2):
# `--load-from DiT-XL-2-256x256.pt` (an original DiT file) sets
# model.pretrained_denoiser, which VideoDiT.load_image_dit inflates *exactly* (the
# untrained video model is the DiT applied frame by frame). Exact inflation needs one
# spatial block per DiT block, i.e. 28 spatial blocks, so with DiT-XL/2 use
#   --cfg-options model.denoiser.depth=56        (latte: 28 spatial + 28 temporal)
#   or model.denoiser.block_type=stdit            (28 STDiT blocks)
# and the 1000-class label table: model.denoiser.num_classes=1000 model.num_classes=1000
# (UCF-101's labels then index into ImageNet's table; a fresh 101-class table cannot be
# inflated strictly). With this file's depth 28 the load stops with a message saying so.
#
# Data: UCF-101 clips (16 frames, stride 3, 256x256 center crop) encoded once by the SD
# VAE into the packed latent store (tools/extract_features.py --manifest; the commands
# are in _base_/datasets/ucf101_16x256_latents.py and docs/video.md).
# Text-conditioned instead (T5 captions, cross-attention, null caption for guidance):
# configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py, which inherits this file.
_base_ = [
    '_base_/models/video_dit_xl2.py',
    '_base_/datasets/ucf101_16x256_latents.py',
    '_base_/default_runtime.py',
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999)),
)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000000)
# default_runtime's hooks, and Latte's clipping: the gradient norm at 0.1 from
# iteration 100,000 (clip_max_norm / start_clip_iter); none before.
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
    dict(type='GradClipFromHook', begin=100000, max_norm=0.1),
]
