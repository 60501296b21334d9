"""VideoDiT on non-square latents (480p clips: 480x848 pixels -> 60x106 SD-VAE latents)."""
import pytest
import torch

from mmsora.models import VideoDiT
from mmsora.models.layers.embedders import get_2d_sincos_pos_embed
from mmsora.registry import MODELS


def tiny(size=(4, 6)):
    torch.manual_seed(0)
    return VideoDiT(input_size=size, patch_size=2, in_channels=3, hidden_size=32, depth=2,
                    num_heads=2, num_classes=2, learn_sigma=False, num_frames=3)


def test_token_grid_positions_and_round_trip():
    model = tiny()
    assert model.x_embedder.grid_size == (2, 3)
    torch.testing.assert_close(model.pos_embed[0], get_2d_sincos_pos_embed(32, (2, 3)).float())
    # unpatchify inverts the patch order: tokens laid out row-major over (h, w).
    x = torch.randn(2, 3, 3, 4, 6)
    p = 2
    tokens = x.permute(0, 2, 3, 4, 1).reshape(2, 3, 2, p, 3, p, 3)       # n t h p w q c
    tokens = tokens.permute(0, 1, 2, 4, 3, 5, 6).reshape(2, 3 * 6, p * p * 3)
    torch.testing.assert_close(model.unpatchify(tokens, 3), x)


def test_forward_backward_and_sampling():
    model = tiny()
    for p in model.parameters():
        if p.requires_grad and p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, 3, 3, 4, 6)
    out = model(x, torch.tensor([5, 9]), torch.tensor([0, 1]))
    assert out.shape == x.shape
    out.square().mean().backward()
    # every trainable weight is on the path to the output (the 2x3 grid's positions
    # are fixed sin-cos, not trained)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    ld = MODELS.build(dict(
        type='LatentDiffusion',
        denoiser=dict(type='VideoDiT', input_size=[4, 6], patch_size=2, in_channels=3,
                      hidden_size=32, depth=2, num_heads=2, num_classes=2,
                      learn_sigma=False, num_frames=3),
        diffusion=dict(type='GaussianDiffusion', learn_sigma=False),
        latent_shape=(3, 3, 4, 6), num_classes=2))
    assert ld.sample([0, 1], sampler='ddim', num_steps=2, seeds=[0, 1]).shape == (2, 3, 3, 4, 6)
    assert ld(latents=torch.randn(2, 3, 3, 4, 6), labels=torch.tensor([0, 1]))['loss'] > 0


def test_sizes_must_fit_the_patch():
    with pytest.raises(ValueError, match='is not a multiple of patch_size 2'):
        tiny((4, 5))
    with pytest.raises(AssertionError, match='does not match the model'):
        tiny()(torch.randn(1, 3, 3, 6, 4), torch.tensor([1]), torch.tensor([0]))
