# 480p, 5-second text-to-video: the text-conditioned VideoDiT-XL/2
# (video_dit_xl2_8xb5_1m_t5_clips256.py) on 40-frame 480x848 clips at 8 fps (5 s),
# SD-VAE latents of 4x40x60x106 (non-square token grid 30x53 per frame, 63,600 tokens
# per clip with patch 2). Sizes: 854x480 rounded down to a multiple of VAE factor x
# patch = 16 gives 848x480 (ResizeCropVideo(round_to=16) / extract --size 480 848).
# bf16 autocast, every block checkpointed. Memory (tools/estimate_memory.py, 8 GPUs;
# estimates, not yet checked on a card): 44.8 GiB per GPU at 2 clips with DDP (an 80 GB
# card holds 4, a 48 GB card 1); with --deepspeed deepspeed_zero2, 22.8 GiB (48 GB cards
# hold 4, 24 GB cards 1). One 24 GB card holds 2 clips with --deepspeed
# deepspeed_zero2_offload (20.95 GiB; ~22 GiB of host RAM). Checkpointing fewer blocks
# needs >= 71 GiB at one clip. docs/distributed.md, "480p, 5 s clips".
#   python tools/extract_features.py --manifest data/clips/train.csv --num-frames 40 \
#       --target-fps 8 --size 480 848 --vae checkpoints/sd-vae-ft-ema \
#       --text-encoder checkpoints/t5-v1_1-xxl --text-encoder-dtype bfloat16 \
#       --out data/clips_40x480p_t5_latents
#   python tools/infer.py work_dirs/video_dit_xl2_8xb2_t5_480p_5s --prompt "..." --out clips/
_base_ = ['./video_dit_xl2_8xb5_1m_t5_clips256.py']

model = dict(
    denoiser=dict(input_size=(60, 106), num_frames=40, grad_checkpointing=True),
    latent_shape=(4, 40, 60, 106),
)
sample_cfg = dict(fps=8)
data_root = 'data/clips_40x480p_t5_latents'
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
# bf16 on every card this targets (DeepSpeed then trains the module in it)
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale='dynamic')
