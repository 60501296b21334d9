"""Tiny model configs shared by the tests."""

# A tiny random SD-style VAE: 2 blocks -> spatial factor 2, 4 latent channels.
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=8, down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, sample_size=16)
