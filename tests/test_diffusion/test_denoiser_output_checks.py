"""A denoiser of one's own (README, "Your own modules") whose output has the wrong
shape, or is a diffusers output object, is named in one ValueError line by the
objectives (GaussianDiffusion, Transport, WuerstchenDiffusion), in the training loss
and in sampling. Before, a bare AssertionError, an AttributeError on ``.shape`` or a
broadcasting RuntimeError came out of the objective's code."""
import re

import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.models import LatentDiffusion
from mmsora.registry import MODELS


@MODELS.register_module(force=True)
class OwnChannelsDenoiser(nn.Module):
    """A per-position linear map of the channels, ``in_channels -> out_channels``,
    conditioned on a class embedding; it can drop frames or wrap its output."""

    def __init__(self, in_channels=4, out_channels=8, num_classes=3, drop_frames=0,
                 wrap=False):
        super().__init__()
        self.in_channels = in_channels
        self.y_embedder = nn.Embedding(num_classes + 1, in_channels)
        self.proj = nn.Linear(in_channels, out_channels)
        self.drop_frames, self.wrap = drop_frames, wrap

    def forward(self, x, t, y):
        h = x + self.y_embedder(y).view(*x.shape[:2], *([1] * (x.ndim - 2)))
        out = self.proj(h.movedim(1, -1)).movedim(-1, 1)         # (N, out, [T,] H, W)
        if self.drop_frames:
            out = out[:, :, :-self.drop_frames]
        return UNet2DOutput(sample=out) if self.wrap else out

    def forward_with_cfg(self, x, t, y, cfg_scale):
        out = self.forward(x, t, y)
        if self.wrap:
            return out
        cond, uncond = out.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([guided, guided])


def build(latent_shape=(4, 8, 8), diffusion=dict(type='GaussianDiffusion'), **denoiser):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='LatentDiffusion', latent_shape=latent_shape, num_classes=3,
                              denoiser=dict(type='OwnChannelsDenoiser', **denoiser),
                              diffusion=diffusion))
    assert isinstance(model, LatentDiffusion)
    return model


def loss(model):
    shape = (2, *model.latent_shape)
    return model(latents=torch.randn(shape), labels=torch.tensor([0, 1]))


def sample(model, **kwargs):
    return model.sample(labels=[0, 1], seeds=[0, 1], decode=False, **kwargs)


def exactly(message):
    return '^' + re.escape(message) + '$'


# ------------------------------------------------------------------ GaussianDiffusion

def refused_in_loss_and_sampling(model, msg, sampler=None, num_steps=2, samplers=()):
    """The one line ``msg`` from the training loss and from sampling alike (with
    ``sampler`` and each of ``samplers``; None: the objective's own)."""
    with pytest.raises(ValueError, match=msg):
        loss(model)
    for name in (sampler, *samplers):
        with pytest.raises(ValueError, match=msg):
            sample(model, num_steps=num_steps, **({} if name is None else {'sampler': name}))


def test_learn_sigma_with_other_channels_is_named_in_loss_and_sampling():
    """learn_sigma=True and 12 channels: ``assert model_output.shape == (B, 2C, ...)``."""
    model = build(out_channels=12)
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned shape (2, 12, 8, 8) for '
                  "latents (2, 4, 8, 8): learn_sigma=True expects 8 channels (the mean and "
                  "the variance's), got 12")
    refused_in_loss_and_sampling(model, msg, 'ddpm', samplers=('ddim',))
    # through forward_with_cfg (a bound method) and the precision wrapper: the guided
    # batch is doubled
    with pytest.raises(ValueError, match=r'^model.denoiser \(OwnChannelsDenoiser\) returned '
                                         r'shape \(4, 12, 8, 8\) for latents \(4, 4, 8, 8\)'):
        sample(model, sampler='ddpm', num_steps=2, cfg_scale=2.0, precision='fp32')
    # a diffusers scheduler takes the first C channels of C or 2C
    with pytest.raises(ValueError, match=exactly(
            'model.denoiser (OwnChannelsDenoiser) returned shape (2, 12, 8, 8) for latents '
            '(2, 4, 8, 8): DDIMScheduler expects 4 channels (the noise; or 8, a '
            'learned-sigma output, the variance dropped), got 12')):
        sample(model, sampler='DDIMScheduler', num_steps=2)


def test_learn_sigma_with_mean_only_says_to_turn_it_off():
    model = build(out_channels=4)
    with pytest.raises(ValueError, match=exactly(
            'model.denoiser (OwnChannelsDenoiser) returned shape (2, 4, 8, 8) for latents '
            "(2, 4, 8, 8): learn_sigma=True expects 8 channels (the mean and the variance's), "
            'got 4; set model.diffusion.learn_sigma=False for a denoiser without a variance '
            'output')):
        loss(model)


def test_no_learn_sigma_with_twice_the_channels_says_to_turn_it_on():
    """learn_sigma=False and 2C: ``assert model_output.shape == target.shape``."""
    model = build(out_channels=8, diffusion=dict(type='GaussianDiffusion', learn_sigma=False))
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned shape (2, 8, 8, 8) for '
                  'latents (2, 4, 8, 8): learn_sigma=False expects 4 channels, got 8; set '
                  'model.diffusion.learn_sigma=True for a denoiser that predicts the '
                  'variance too (as DiT)')
    refused_in_loss_and_sampling(model, msg, sampler='ddim', num_steps=2)


def test_video_denoiser_dropping_a_frame():
    model = build(latent_shape=(4, 3, 8, 8), out_channels=8, drop_frames=1)
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned shape (2, 8, 2, 8, 8) for '
                  "latents (2, 4, 3, 8, 8): expected the latents' (frames, height, width) "
                  '(3, 8, 8), got (2, 8, 8)')
    refused_in_loss_and_sampling(model, msg, sampler='ddpm', num_steps=2)


def test_diffusers_output_object_is_named():
    """A wrapped diffusers UNet returning UNet2DOutput: an AttributeError on .shape."""
    model = build(out_channels=8, wrap=True)
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned a UNet2DOutput, not a '
                  'tensor: return a tensor (e.g. the .sample of a diffusers output)')
    refused_in_loss_and_sampling(model, msg, 'ddpm', samplers=('DDIMScheduler',))
    # through LatentDiffusion's precision wrapper (infer always sets one) too
    for precision in ('fp32', 'bf16'):
        with pytest.raises(ValueError, match=msg):
            sample(model, sampler='ddpm', num_steps=2, precision=precision)


def test_correct_outputs_pass_unchanged():
    """The check lets the right shapes through, 2C and C for the flow objective (the
    numbers against a closed form: test_a_plain_function_is_the_denoiser)."""
    model = build(out_channels=8)
    torch.manual_seed(1)
    out = loss(model)
    assert torch.isfinite(out['loss']) and set(out) == {'loss', 'mse', 'vb'}
    z = sample(model, sampler='ddim', num_steps=2)
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()
    for channels in (8, 4):
        flow = build(out_channels=channels, diffusion=dict(type='Transport'))
        assert torch.isfinite(loss(flow)['loss'])
        assert sample(flow, sampler='ode_euler', num_steps=2).shape == (2, 4, 8, 8)


def test_a_plain_function_is_the_denoiser():
    diffusion = GaussianDiffusion(learn_sigma=False)
    x0 = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match=exactly(
            'the denoiser returned shape (2, 2, 8, 8) for latents (2, 4, 8, 8): '
            'learn_sigma=False expects 4 channels, got 2')):
        diffusion.training_losses(lambda x, t: x[:, :2], x0, torch.tensor([3, 5]))
    with pytest.raises(ValueError, match=exactly(
            'the denoiser returned shape (4, 64) for latents (2, 4, 8, 8): expected 4 '
            'dimensions (N, C, height, width), got 2')):
        diffusion.training_losses(lambda x, t: x.flatten(2)[0], x0, torch.tensor([3, 5]))
    # the objective's own numbers for a right output: the MSE of eps against the noise
    noise = torch.randn_like(x0)
    terms = diffusion.training_losses(lambda x, t: torch.zeros_like(x), x0,
                                      torch.tensor([3, 5]), noise=noise)
    torch.testing.assert_close(terms['loss'], noise.pow(2).mean(dim=(1, 2, 3)))


# ------------------------------------------------------------------ Transport
def test_transport_names_the_denoiser():
    """SiT's objective read ``out.shape[1]`` (an AttributeError for an output object)
    and asserted the shape without naming the denoiser."""
    model = build(out_channels=12, diffusion=dict(type='Transport'))
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned shape (2, 12, 8, 8) for '
                  "latents (2, 4, 8, 8): Transport expects 4 channels (the velocity; or 8, a "
                  "learned-sigma denoiser's, the variance dropped), got 12")
    refused_in_loss_and_sampling(model, msg, 'ode_euler',
                                 samplers=('sde_euler', 'FlowMatchEulerDiscreteScheduler'))
    wrapped = build(out_channels=4, wrap=True, diffusion=dict(type='Transport'))
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned a UNet2DOutput, not a '
                  'tensor: return a tensor (e.g. the .sample of a diffusers output)')
    with pytest.raises(ValueError, match=msg):
        loss(wrapped)
    with pytest.raises(ValueError, match=msg):
        sample(wrapped, sampler='ode_euler', num_steps=2)
    video = build(latent_shape=(4, 3, 8, 8), out_channels=4, drop_frames=1,
                  diffusion=dict(type='Transport'))
    with pytest.raises(ValueError, match=re.escape(
            "expected the latents' (frames, height, width) (3, 8, 8), got (2, 8, 8)")):
        loss(video)


def test_transport_plain_function():
    with pytest.raises(ValueError, match=r'^the denoiser returned shape \(2, 4, 8, 8\) for '
                                         r'latents \(3, 4, 8, 8\): expected the batch of 3, '
                                         r'got 2$'):
        Transport().loss(lambda x, t: x[:2], torch.randn(3, 4, 8, 8))


# ------------------------------------------------------------------ WuerstchenDiffusion
def test_wuerstchen_names_the_denoiser():
    """Stage C's objective broadcast the prediction against the noise (a RuntimeError,
    or a wrong loss when the shapes broadcast)."""
    model = build(out_channels=8, diffusion=dict(type='WuerstchenDiffusion'))
    msg = exactly('model.denoiser (OwnChannelsDenoiser) returned shape (2, 8, 8, 8) for '
                  'latents (2, 4, 8, 8): WuerstchenDiffusion expects 4 channels (the noise), '
                  'got 8')
    refused_in_loss_and_sampling(model, msg)
    # (N, 1, H, W) broadcast against the noise without an error before
    one = build(out_channels=1, diffusion=dict(type='WuerstchenDiffusion'))
    with pytest.raises(ValueError, match=r'expects 4 channels \(the noise\), got 1$'):
        loss(one)
    right = build(out_channels=4, diffusion=dict(type='WuerstchenDiffusion'))
    assert torch.isfinite(loss(right)['loss'])
    assert sample(right, num_steps=2).shape == (2, 4, 8, 8)
