"""VideoVAEWrapper: temporal compression, per-channel normalisation, micro-batching."""
import pytest
import torch
from diffusers import AutoencoderKLWan

from mmsora.models import VideoVAEWrapper
from tests.tiny_models import TINY_WAN_VAE


def test_wan_shapes_and_normalisation_match_diffusers():
    torch.manual_seed(0)
    vae = VideoVAEWrapper('AutoencoderKLWan', config=TINY_WAN_VAE)
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    mean, std = vae.encode_moments(x)
    assert mean.shape == (2, 4, 3, 4, 4) == std.shape  # 5 frames -> 3, 16 px -> 4
    assert vae.latent_shape(5, 16, 16) == (4, 3, 4, 4)
    assert vae.latent_channels == 4 and vae.downsample_factor == 4
    raw = vae.vae.encode(x).latent_dist.mean
    m = torch.tensor(TINY_WAN_VAE['latents_mean']).view(1, -1, 1, 1, 1)
    s = torch.tensor(TINY_WAN_VAE['latents_std']).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(mean, (raw - m) / s)  # the Wan pipeline's normalisation
    # decode inverts the normalisation before the diffusers decoder.
    torch.testing.assert_close(vae.decode(mean),
                               vae.vae.decode(raw).sample.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_micro_batches_pictures_and_state_dict():
    vae = VideoVAEWrapper('AutoencoderKLWan', config=TINY_WAN_VAE, micro_batch_size=1)
    x = torch.rand(3, 3, 3, 8, 8) * 2 - 1
    full = VideoVAEWrapper('AutoencoderKLWan', config=TINY_WAN_VAE)
    full.__dict__['_vae'] = vae.vae  # same weights
    torch.testing.assert_close(vae.encode_moments(x)[0], full.encode_moments(x)[0])
    assert vae.encode_moments(x[:, :, 0])[0].shape == (3, 4, 2, 2)  # pictures = 1 frame
    assert len(vae.state_dict()) == 0


def test_scaling_factor_without_statistics(tmp_path):
    from diffusers import AutoencoderKLCogVideoX
    cfg = dict(block_out_channels=(8, 8), latent_channels=4, layers_per_block=1,
               norm_num_groups=4, temporal_compression_ratio=2,
               down_block_types=('CogVideoXDownBlock3D',) * 2,
               up_block_types=('CogVideoXUpBlock3D',) * 2, scaling_factor=1.15)
    AutoencoderKLCogVideoX(**cfg).save_pretrained(tmp_path)  # the real loading path
    vae = VideoVAEWrapper('AutoencoderKLCogVideoX', pretrained_path=str(tmp_path))
    x = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    mean, _ = vae.encode_moments(x)
    torch.testing.assert_close(mean, vae.vae.encode(x).latent_dist.mean * 1.15)
    assert VideoVAEWrapper('AutoencoderKLCogVideoX', pretrained_path=str(tmp_path),
                           scale_factor=2.0).encode_moments(x)[0].shape == mean.shape


def test_errors():
    with pytest.raises(ValueError, match='must be one of'):
        VideoVAEWrapper('AutoencoderKL', config={})
    with pytest.raises(FileNotFoundError, match='does not exist'):
        VideoVAEWrapper(pretrained_path='/nonexistent/vae').vae
