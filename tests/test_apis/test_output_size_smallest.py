"""A Stable Cascade model refuses a resolution below the smallest its UNets take, in
one line naming the smallest (--resolution 8x8 of the tiny model, a 1x1 latent, ended
in a convolution's traceback after sampling: 'Kernel size can't be greater than actual
input size')."""
import pytest
import torch
from mmengine.config import Config

from mmsora.apis.inference import set_output_size
from mmsora.registry import MODELS
from mmsora.utils.tiny_checkpoints import TINY_STAGE_A, TINY_STAGE_B

TINY_DECODER = dict(type='StableCascadeDecoder',
                    config=dict(decoder=dict(TINY_STAGE_B, effnet_in_channels=16,
                                             clip_text_pooled_in_channels=16),
                                vqgan=TINY_STAGE_A),
                    latent_dim_scale=2.0, num_steps=2)


def test_a_resolution_below_the_smallest_latent_is_refused(repo_root):
    cfg = Config.fromfile(
        f'{repo_root}/configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py').model
    cfg = dict(cfg.to_dict(), vae=TINY_DECODER, text_encoder=None)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    trained = tuple(model.latent_shape)
    assert model.vae.downsample_factor == 8.0
    for resolution, latent in (((8, 8), '1x1'), ((8, 24), '1x3')):
        with pytest.raises(ValueError) as error:
            set_output_size(model, resolution=resolution)
        h, w = resolution
        assert str(error.value) == (
            f"{h}x{w} pixels is a {latent} latent, below this model's smallest, 2x2 (its "
            'UNets down-sample it): give at least 9x9')
        assert tuple(model.latent_shape) == trained
    assert set_output_size(model, resolution=(9, 9))[-2:] == (2, 2)
    assert set_output_size(model, resolution=(16, 16))[-2:] == (2, 2)
    # the smallest decodes; one side less is what the convolution refused
    channels = trained[0]
    with torch.no_grad():
        assert model.vae.decode(torch.randn(1, channels, 1, 2, 2)).shape == (1, 3, 1, 16, 16)
        with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
            model.vae.decode(torch.randn(1, channels, 1, 1, 1))
