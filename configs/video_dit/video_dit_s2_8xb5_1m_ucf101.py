# VideoDiT-S/2 (Latte-S/2: DiT-S/2 widths, depth 12 = 6 spatial + 6 temporal
# interleaved blocks) on UCF-101 16x256x256 SD-VAE latents; otherwise the recipe of
# configs/dit_xl2_video.py (8 GPUs x 5 clips, AdamW 1e-4, EMA 0.9999).
#   bash tools/dist_train.sh configs/video_dit/video_dit_s2_8xb5_1m_ucf101.py 8 --amp
# Inflating an image DiT-S/2 (12 blocks; a file in the original DiT or fast-DiT
# layout, e.g. fast-DiT's training checkpoints) exactly needs 12 spatial blocks:
#   --load-from DiT-S-2.pt --cfg-options model.denoiser.depth=24
_base_ = ['../dit_xl2_video.py']

model = dict(
    denoiser=dict(
        type='VideoDiT', input_size=32, patch_size=2, in_channels=4, hidden_size=384,
        depth=12, num_heads=6, mlp_ratio=4.0, class_dropout_prob=0.1,
        num_classes=101, learn_sigma=True, num_frames=16, block_type='latte',
        condition='class'))
