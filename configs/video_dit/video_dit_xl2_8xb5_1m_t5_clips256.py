# configs/dit_xl2_video.py made text-conditioned (Open-Sora 1.0 / PixArt-alpha style):
# every block cross-attends to T5-v1.1-XXL tokens of the caption (4096 wide, 120
# tokens, padded with a mask), 10% of captions are dropped to a learned null caption
# for classifier-free guidance (cfg 7.0 at sampling, as Open-Sora 1.0). STDiT blocks
# (spatial and temporal attention in each of 28 blocks), so `--load-from
# DiT-XL-2-256x256.pt` inflates all 28 DiT blocks exactly; the label table is not used.
#
# Data: a manifest of captioned clips (path, caption), encoded once with the SD VAE
# and T5 (the 9.5 GB encoder never sits in training memory):
#   python tools/extract_features.py --manifest data/clips/train.csv --num-frames 16 \
#       --frame-stride 3 --size 256 --vae checkpoints/sd-vae-ft-ema \
#       --text-encoder checkpoints/t5-v1_1-xxl --text-encoder-dtype bfloat16 \
#       --out data/clips_16x256_t5_latents
#   bash tools/dist_train.sh configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py 8 --amp
#   python tools/infer.py work_dirs/video_dit_xl2_8xb5_1m_t5_clips256 \
#       --prompt "a red sports car drives along a coast road" --out clips/
# tools/infer.py encodes prompts with model.text_encoder (loaded only when sampling).
# Open-Sora 1.0's own recipe (its configs/opensora/train/16x256x256.py) differs: lr 2e-5,
# 8 clips per GPU, gradient clipping at 1.0, bf16, starting from PixArt-XL-2-512x512;
# 100 sampling steps. Here: Latte's optimizer settings (lr 1e-4, 5 clips), without
# Latte's late clipping (below).
_base_ = ['../dit_xl2_video.py']

model = dict(
    denoiser=dict(block_type='stdit', condition='text', text_dim=4096, max_text_len=120,
                  class_dropout_prob=0.1),
    text_encoder=dict(type='HFTextEncoder', pretrained_path='checkpoints/t5-v1_1-xxl',
                      kind='t5', max_length=120, dtype='bfloat16'),
    num_classes=1,
)
# default_runtime's hooks (not Latte's late clipping)
custom_hooks = [
    dict(type='EMAHook', momentum=1e-4, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='RNGStateHook'),
]
# (guidance on the first 3 latent channels, Open-Sora 1.0's cfg_channel=3)
sample_cfg = dict(sampler='ddpm', num_steps=250, cfg_scale=7.0, guidance_channels=3, fps=8)
data_root = 'data/clips_16x256_t5_latents'
train_dataloader = dict(dataset=dict(data_root=data_root))
