"""Tiny model configs shared by the tests."""
# The tiny text encoder folders (and their vocabulary) are the package's: the tools
# write them too (tools/make_tiny_stable_cascade.py).
from mmsora.utils.tiny_checkpoints import TINY_WORDS, make_tiny_text_encoder  # noqa: F401

# A tiny random SD-style VAE: 2 blocks -> spatial factor 2, 4 latent channels.
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=8, down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, sample_size=16)

# --cfg-options that shrink the main demo (configs/dit/dit_tiny2_1xb32_1500_shapes16.py)
# to 8x8 pictures, a 2-block DiT of width 32 and 3 logged steps with a global batch of
# 8 (for the multi-process training tests).
TINY_DEMO_OPTIONS = [
    'model.denoiser.hidden_size=32', 'model.denoiser.depth=2', 'model.denoiser.num_heads=2',
    'model.denoiser.input_size=8', 'model.latent_shape=[3,8,8]',
    'model.denoiser.class_dropout_prob=0.5',
    'train_dataloader.dataset.size=8', 'train_dataloader.dataset.num_samples=32',
    'param_scheduler=[]', 'train_cfg.max_iters=3', 'default_hooks.logger.interval=1',
    'global_batch_size=8',
]

# A tiny random Wan video VAE: spatial factor 4, temporal factor 2 (causal: T frames ->
# (T - 1) // 2 + 1 latent frames), 4 latent channels, with per-channel latent statistics.
TINY_WAN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                    temperal_downsample=[False, True], attn_scales=[],
                    latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 1.0, 0.5])
