"""Transport inside LatentDiffusion: a DiT (learn_sigma=False, SiT's backbone) trains a
few steps and samples with every transport sampler, with and without guidance; a
VideoDiT trains with rectified flow (logit-normal t, DiT timesteps); sampler names are
checked per objective."""
import pytest
import torch

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.registry import MODELS

TINY_SIT = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                depth=2, num_heads=2, num_classes=3, learn_sigma=False)
SAMPLERS = [('ode_euler', 4), ('ode_heun', 3), ('ode_dopri5', 1), ('sde_euler', 5),
            ('sde_heun', 4), ('FlowMatchEulerDiscreteScheduler', 4)]


def build(denoiser=TINY_SIT, latent_shape=(4, 8, 8), **transport):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='LatentDiffusion', denoiser=denoiser,
                              diffusion=dict(type='Transport', **transport),
                              latent_shape=latent_shape, num_classes=3))
    with torch.no_grad():  # leave adaLN-Zero's zero start, so outputs depend on x
        for p in model.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def fixed_loss(model, latents, labels):
    torch.manual_seed(123)  # the same t and noise draws each time
    return model(latents=latents, labels=labels)['loss'].item()


def test_dit_trains_a_few_steps_with_the_transport_loss():
    model = build()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    # One flat latent per class (-1, 0, 1): a target a tiny DiT learns in a few steps.
    latents = (labels.float() - 1).view(-1, 1, 1, 1).expand(8, 4, 8, 8).contiguous()
    assert set(model(latents=latents, labels=labels)) == {'loss'}
    before = fixed_loss(model, latents, labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):  # measured: 1.61 -> 0.70
        loss = model(latents=latents, labels=labels)['loss']
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_loss(model, latents, labels) < 0.6 * before


@pytest.mark.parametrize('sampler, steps', SAMPLERS)
@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_every_sampler_through_latent_diffusion(sampler, steps, cfg_scale):
    if sampler == 'ode_dopri5':
        pytest.importorskip('torchdiffeq')
    model = build().eval()
    kw = dict(sampler=sampler, num_steps=steps, cfg_scale=cfg_scale)
    both = model.sample([0, 2], seeds=[11, 12], **kw)
    assert both.shape == (2, 4, 8, 8) and torch.isfinite(both).all()
    nfe = model.diffusion.last_nfe
    assert nfe >= steps
    # A sample depends on its seed only (the SDEs' noise included), also with CFG;
    # dopri5 picks its steps for the whole batch, so there only within its tolerance.
    alone = model.sample([2], seeds=[12], **kw)
    tol = 1e-2 if sampler == 'ode_dopri5' else 1e-4
    torch.testing.assert_close(both[1:], alone, atol=tol, rtol=tol)
    assert not torch.allclose(alone, model.sample([2], seeds=[13], **kw))
    if cfg_scale != 1.0:
        plain = model.sample([2], seeds=[12], sampler=sampler, num_steps=steps)
        assert not torch.allclose(plain, alone)


def test_learned_sigma_dit_and_default_sampler():
    # SiT's released checkpoints keep DiT's 2C-channel head and drop the second half.
    model = build(dict(TINY_SIT, learn_sigma=True)).eval()
    loss = model(latents=torch.randn(2, 4, 8, 8), labels=torch.tensor([0, 1]))['loss']
    assert torch.isfinite(loss)
    x = model.sample([1], seeds=[0], num_steps=4)  # Transport's default: SiT's SDE
    assert x.shape == (1, 4, 8, 8) and model.diffusion.last_nfe == 4


def test_video_dit_trains_with_rectified_flow():
    video = dict(type='VideoDiT', input_size=8, patch_size=4, in_channels=4, hidden_size=32,
                 depth=2, num_heads=2, num_classes=3, learn_sigma=False, num_frames=2)
    model = build(video, latent_shape=(4, 2, 8, 8), time_dist='logit_normal',
                  timestep_convention='dit')
    losses = model(latents=torch.randn(2, 4, 2, 8, 8), labels=torch.tensor([0, 2]))
    losses['loss'].backward()
    assert model.denoiser.x_embedder.proj.weight.grad.abs().sum() > 0
    model.eval()
    for sampler in ('ode_euler', 'FlowMatchEulerDiscreteScheduler'):
        clip = model.sample([1], seeds=[0], sampler=sampler, num_steps=3, cfg_scale=2.0)
        assert clip.shape == (1, 4, 2, 8, 8) and torch.isfinite(clip).all()


def test_sampler_names_are_checked_per_objective():
    flow = build()
    with pytest.raises(ValueError, match=r"unknown sampler 'ddpm' for Transport; "
                                         r"choose one of \['ode_euler'"):
        flow.sample([0], seeds=[0], sampler='ddpm', num_steps=2)
    gaussian = MODELS.build(dict(type='LatentDiffusion', denoiser=dict(TINY_SIT, learn_sigma=True),
                                 latent_shape=(4, 8, 8), num_classes=3))
    with pytest.raises(ValueError, match=r"unknown sampler 'ode_euler' for GaussianDiffusion; "
                                         r"choose one of \['ddpm', 'ddim'"):
        gaussian.sample([0], seeds=[0], sampler='ode_euler', num_steps=2)
    with pytest.raises(ValueError, match="'ddpm' takes no option atol"):
        gaussian.sample([0], seeds=[0], sampler='ddpm', num_steps=2, atol=1e-3)
    # a short or wrongly cased name gets the samplers it is close to
    with pytest.raises(ValueError, match=r"; did you mean ddpm, DDPMScheduler, "
                                         r"DPMSolverMultistepScheduler\?$"):
        gaussian.sample([0], seeds=[0], sampler='dpm', num_steps=2)
    with pytest.raises(ValueError, match=r"; did you mean ode_euler, "):
        flow.sample([0], seeds=[0], sampler='ODE_Euler', num_steps=2)
