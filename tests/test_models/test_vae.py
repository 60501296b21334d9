import pytest
import torch
from diffusers import AutoencoderKL

from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.registry import MODELS
from tests.tiny_models import TINY_VAE


@pytest.fixture(scope='module')
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('pipeline')
    AutoencoderKL(**TINY_VAE).save_pretrained(path / 'vae')  # SD pipeline layout
    return path


@pytest.fixture(scope='module')
def images():
    return torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_load_local_and_frozen(vae_dir):
    vae = MODELS.build(dict(type='AutoencoderKLWrapper', pretrained_path=str(vae_dir),
                            subfolder='vae'))
    auto = AutoencoderKLWrapper(str(vae_dir))  # finds vae/ by itself
    ref = AutoencoderKL.from_pretrained(vae_dir / 'vae')
    for a, b, c in zip(vae.vae.parameters(), auto.vae.parameters(), ref.parameters()):
        assert torch.equal(a, c) and torch.equal(b, c)
    assert not any(p.requires_grad for p in vae.vae.parameters())
    vae.train()
    assert not vae.vae.training
    assert vae.latent_channels == 4 and vae.downsample_factor == 2
    assert vae.scale_factor == 0.18215


def test_no_accelerate_warning_at_load(vae_dir, capfd, caplog):
    """diffusers told users to 'pip install accelerate' (with a stray code fence) at
    every VAE load where accelerate is not installed; it is not a requirement."""
    from importlib.util import find_spec
    capfd.readouterr()
    AutoencoderKLWrapper(str(vae_dir)).vae
    out, err = capfd.readouterr()
    assert 'accelerate' not in out + err + caplog.text or find_spec('accelerate') is not None


def test_missing_dir(tmp_path):
    # Configs build without the weights; the first use names the missing folder.
    missing = AutoencoderKLWrapper(str(tmp_path / 'no_such_vae'))
    with pytest.raises(FileNotFoundError, match='no_such_vae'):
        missing.decode(torch.zeros(1, 4, 2, 2))
    with pytest.raises(FileNotFoundError, match='no config.json'):
        AutoencoderKLWrapper(str(tmp_path)).vae
    with pytest.raises(ValueError, match='exactly one'):
        AutoencoderKLWrapper()


def test_scale_factor_against_diffusers(vae_dir, images):
    vae = AutoencoderKLWrapper(str(vae_dir), scale_factor=0.5)
    ref = AutoencoderKL.from_pretrained(vae_dir / 'vae').eval()
    with torch.no_grad():
        dist = ref.encode(images).latent_dist
        mean, std = vae.encode_moments(images)
        assert mean.shape == std.shape == (5, 4, 8, 8)
        torch.testing.assert_close(mean, dist.mean * 0.5)
        torch.testing.assert_close(std, dist.std * 0.5)
        # Sampling: same noise as diffusers' latent_dist.sample(generator).
        z = vae.encode(images, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(z, dist.sample(torch.Generator().manual_seed(3)) * 0.5)
        out = vae.decode(z)
        assert out.shape == images.shape and out.min() >= -1 and out.max() <= 1
        torch.testing.assert_close(out, ref.decode(z / 0.5).sample.clamp(-1, 1))


def test_vae_stays_out_of_the_state_dict(vae_dir):
    # A frozen VAE must not end up in checkpoints, the optimizer or the EMA copy.
    vae = AutoencoderKLWrapper(str(vae_dir))
    vae.decode(torch.zeros(1, 4, 2, 2))  # loaded now
    assert vae.state_dict() == {} and list(vae.parameters()) == []
    assert sum(p.numel() for p in vae.vae.parameters()) > 0


def test_micro_batching_matches_one_batch(images):
    torch.manual_seed(0)
    vae = AutoencoderKLWrapper(config=TINY_VAE)
    small = AutoencoderKLWrapper(config=TINY_VAE, micro_batch_size=2)
    small.vae.load_state_dict(vae.vae.state_dict())
    for a, b in zip(vae.encode_moments(images), small.encode_moments(images)):
        torch.testing.assert_close(a, b)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    z = vae.encode(images, generator=g())
    torch.testing.assert_close(small.encode(images, generator=g()), z)
    torch.testing.assert_close(small.decode(z), vae.decode(z))


def test_video_folds_frames(images):
    torch.manual_seed(0)
    vae = AutoencoderKLWrapper(config=TINY_VAE, micro_batch_size=3)
    video = torch.stack([images[:2], images[2:4], images[1:3]], dim=2)  # (2, 3, T=3, 16, 16)
    mean, std = vae.encode_moments(video)
    assert mean.shape == std.shape == (2, 4, 3, 8, 8)
    for t in range(3):
        m, s = vae.encode_moments(video[:, :, t])
        torch.testing.assert_close(mean[:, :, t], m)
        torch.testing.assert_close(std[:, :, t], s)
    out = vae.decode(mean)
    assert out.shape == video.shape
    torch.testing.assert_close(out[:, :, 1], vae.decode(mean[:, :, 1]))
    with pytest.raises(ValueError, match='expected'):
        vae.encode(images[0])
