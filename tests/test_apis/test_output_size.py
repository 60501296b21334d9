"""set_output_size / infer --num-frames --resolution: the latent follows the output size
through the VAE's factors, within what the denoiser can make."""
import pytest

from mmsora.apis.inference import set_output_size
from mmsora.registry import MODELS
from mmsora.utils.cli import UserError
from tests.tiny_models import TINY_VAE, TINY_WAN_VAE
from tools.infer import parse_resolution


def video_model(vae=None, latent=(3, 4, 8, 8), channels=3):
    return MODELS.build(dict(
        type='LatentDiffusion',
        denoiser=dict(type='VideoDiT', input_size=latent[-1], patch_size=2,
                      in_channels=channels, hidden_size=32, depth=2, num_heads=2,
                      num_classes=2, learn_sigma=False, num_frames=6),
        diffusion=dict(type='GaussianDiffusion', learn_sigma=False),
        vae=vae, latent_shape=latent, num_classes=2))


def test_frames_within_the_table_and_fixed_resolution():
    model = video_model()
    assert set_output_size(model, num_frames=6) == (3, 6, 8, 8)
    assert model.sample([0], num_steps=1, seeds=[0]).shape == (1, 3, 6, 8, 8)
    assert set_output_size(model, num_frames=2, resolution=(8, 8)) == (3, 2, 8, 8)
    with pytest.raises(ValueError, match='at most 6'):
        set_output_size(model, num_frames=7)
    with pytest.raises(ValueError, match='makes 8x8 .* trained'):
        set_output_size(model, resolution=(16, 16))


def test_vae_factors():
    sd = video_model(dict(type='AutoencoderKLWrapper', config=TINY_VAE), (4, 4, 8, 8), 4)
    assert set_output_size(sd, num_frames=5, resolution=(16, 16)) == (4, 5, 8, 8)
    with pytest.raises(ValueError, match='multiple of the VAE factor 2'):
        set_output_size(sd, resolution=(15, 16))
    wan = video_model(dict(type='VideoVAEWrapper', class_name='AutoencoderKLWan',
                           config=TINY_WAN_VAE), (4, 3, 4, 4), 4)
    # 9 frames -> (9 - 1) / 2 + 1 = 5 latent frames with the tiny VAE's factor 2.
    assert set_output_size(wan, num_frames=9) == (4, 5, 4, 4)
    # 8 frames would come out as 5: refused, naming the counts it can make
    with pytest.raises(ValueError, match='8 frames per clip: AutoencoderKLWan encodes the '
                                         'first 5 .* take 5 or 9 frames'):
        set_output_size(wan, num_frames=8)


def test_picture_models_and_parsing():
    model = MODELS.build(dict(
        type='LatentDiffusion',
        denoiser=dict(type='DiT', input_size=8, patch_size=2, in_channels=3,
                      hidden_size=32, depth=1, num_heads=2, num_classes=2),
        latent_shape=(3, 8, 8), num_classes=2))
    with pytest.raises(ValueError, match='frames are for video models'):
        set_output_size(model, num_frames=4)
    assert set_output_size(model, resolution=(8, 8)) == (3, 8, 8)
    assert parse_resolution('480x848') == (480, 848) and parse_resolution('256') == (256, 256)
    assert parse_resolution(None) is None
    for bad in ('480x', 'ax3', '1x2x3', '0x4'):
        with pytest.raises(UserError, match='HxW or S'):
            parse_resolution(bad)


def test_vae_with_its_own_rounding_and_too_many_steps(capsys):
    model = video_model(None, (3, 4, 8, 8))

    class RoundingVAE:  # like StableCascadeDecoder: a non-integer factor of 42.67
        downsample_factor = 128 / 3

        @staticmethod
        def latent_size(h, w):
            return round(h / 128 * 3), round(w / 128 * 3)
    model.__dict__['vae'] = RoundingVAE()
    with pytest.raises(ValueError, match='makes 341x341'):
        set_output_size(model, resolution=(1024, 1024))  # 24x24 latents: the grid is 8x8
    assert set_output_size(model, resolution=(341, 341)) == (3, 4, 8, 8)
    # a size the grid decodes to otherwise is said (33x33 came out 40x40 silently)
    RoundingVAE.decoded_size = staticmethod(lambda h, w: (341, 341))
    capsys.readouterr()
    assert set_output_size(model, resolution=(340, 342)) == (3, 4, 8, 8)
    assert 'note: resolution 340x342 makes 341x341 frames' in capsys.readouterr().err
    set_output_size(model, resolution=(341, 341))
    assert 'note:' not in capsys.readouterr().err
    model.__dict__['vae'] = None
    with pytest.raises(ValueError, match=r'num_steps must be in \[1, 1000\]'):
        model.sample([0], num_steps=1001, sampler='ddim')


def test_frames_past_the_trained_length_are_noted_without_a_table(repo_root, capsys):
    """Stable Cascade's temporal layers have no frame table to refuse a longer clip:
    --num-frames beyond the trained length was taken without a word."""
    from mmengine.config import Config
    cfg = Config.fromfile(
        f'{repo_root}/configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py').model
    cfg.update(vae=None, text_encoder=None)
    model = MODELS.build(cfg)
    trained = cfg.latent_shape[1]
    capsys.readouterr()
    assert set_output_size(model, num_frames=trained)[1] == trained
    assert 'note:' not in capsys.readouterr().err
    assert set_output_size(model, num_frames=trained + 2)[1] == trained + 2
    assert (f'note: {trained + 2} latent frames, more than the {trained} the model was '
            'configured to train on') in capsys.readouterr().err
