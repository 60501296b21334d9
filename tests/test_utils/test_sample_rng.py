"""Per-sample training draws (mmsora.utils.sample_rng) and LatentDiffusion's
``train_noise_seed``: the same global batch gives the same losses and gradients
however it is split over processes (simulated here in one process by patching the
rank and world size; tests/test_tools/test_world_size_invariance.py runs it for real)."""
import pytest
import torch
from mmengine.logging import MessageHub

import mmsora.models.latent_diffusion as latent_diffusion_module
from mmsora.models import LatentDiffusion
from mmsora.utils import sample_rng


def gens(*seeds):
    return sample_rng.make_generators(seeds)


def test_outside_the_context_draws_are_torch_global_ones():
    x = torch.zeros(3, 2, 4)
    for draw, ref in [(lambda: sample_rng.rand(5), lambda: torch.rand(5)),
                      (lambda: sample_rng.randn((3, 4)), lambda: torch.randn(3, 4)),
                      (lambda: sample_rng.randn_like(x), lambda: torch.randn_like(x)),
                      (lambda: sample_rng.randint(1000, 6), lambda: torch.randint(0, 1000, (6,)))]:
        torch.manual_seed(7)
        a = draw()
        torch.manual_seed(7)
        assert torch.equal(a, ref())


def test_a_sample_draws_from_its_own_generator_only():
    x = torch.zeros(3, 2, 4)
    with sample_rng.per_sample_generators(gens(11, 12, 13)):
        t3, n3, k3 = sample_rng.rand(3), sample_rng.randn_like(x), sample_rng.randint(50, 3)
        global_before = torch.get_rng_state()
    with sample_rng.per_sample_generators(gens(12)):
        t1, n1, k1 = sample_rng.rand(1), sample_rng.randn_like(x[:1]), sample_rng.randint(50, 1)
    assert t3[1] == t1[0] and torch.equal(n3[1], n1[0]) and k3[1] == k1[0]
    assert t3[0] != t3[1] and not torch.equal(n3[0], n3[2])
    assert n3.shape == x.shape and n3.dtype == x.dtype and k3.dtype == torch.long
    assert torch.equal(global_before, torch.get_rng_state())  # global stream untouched
    with sample_rng.per_sample_generators(gens(1, 2)):
        with pytest.raises(ValueError, match='batch changed size'):
            sample_rng.rand(3)


def test_sample_seeds_depend_on_seed_step_and_place():
    base = sample_rng.sample_seeds(0, 5, range(4))
    assert base == sample_rng.sample_seeds(0, 5, range(4))
    assert len(set(base)) == 4 and all(0 <= s < 2**63 for s in base)
    assert not set(base) & set(sample_rng.sample_seeds(1, 5, range(4)))
    assert not set(base) & set(sample_rng.sample_seeds(0, 6, range(4)))


DIFFUSIONS = {
    'dit': dict(type='GaussianDiffusion', learn_sigma=True),
    'sit_logit_normal': dict(type='Transport', time_dist='logit_normal'),
}


def tiny_model(diffusion, seed):
    learn_sigma = diffusion.get('learn_sigma', False)
    torch.manual_seed(0)
    model = LatentDiffusion(
        denoiser=dict(type='DiT', input_size=8, patch_size=2, in_channels=3, hidden_size=32,
                      depth=2, num_heads=2, num_classes=4, class_dropout_prob=0.5,
                      learn_sigma=learn_sigma),
        diffusion=diffusion, latent_shape=(3, 8, 8), num_classes=4, train_noise_seed=seed)
    with torch.no_grad():  # DiT zero-initialises its gates: make every weight matter
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.train()


def step(model, x, y, rank, world, monkeypatch, global_seed=0):
    """Loss and gradients of one process's part of the global batch."""
    monkeypatch.setattr(latent_diffusion_module, 'get_dist_info', lambda: (rank, world))
    torch.manual_seed(global_seed + rank)  # what diff_rank_seed gives each process
    model.zero_grad()
    loss = model.loss(latents=x[rank::world], labels=y[rank::world])['loss']
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def split_runs(model, monkeypatch):
    torch.manual_seed(123)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    MessageHub.get_current_instance().update_info('iter', 3)
    one = step(model, x, y, 0, 1, monkeypatch)
    parts = [step(model, x, y, r, 2, monkeypatch) for r in range(2)]
    # DDP averages the gradients; the global loss is the mean of the equal parts.
    two = (torch.stack([p[0] for p in parts]).mean(),
           [(a + b) / 2 for a, b in zip(parts[0][1], parts[1][1])])
    return one, two


@pytest.mark.parametrize('name', list(DIFFUSIONS))
def test_keyed_draws_make_loss_and_grads_independent_of_the_split(name, monkeypatch):
    model = tiny_model(DIFFUSIONS[name], seed=5)
    (loss1, grads1), (loss2, grads2) = split_runs(model, monkeypatch)
    torch.testing.assert_close(loss2, loss1, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads2, grads1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Another iteration draws other timesteps / noise.
    MessageHub.get_current_instance().update_info('iter', 4)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    monkeypatch.setattr(latent_diffusion_module, 'get_dist_info', lambda: (0, 1))
    a = model.loss(latents=x, labels=y)['loss']
    MessageHub.get_current_instance().update_info('iter', 5)
    assert not torch.allclose(a, model.loss(latents=x, labels=y)['loss'])


@pytest.mark.parametrize('name', list(DIFFUSIONS))
def test_per_process_draws_depend_on_the_split(name, monkeypatch):
    """The negative control: torch's global generator per process (the default)."""
    model = tiny_model(DIFFUSIONS[name], seed=None)
    (loss1, _), (loss2, _) = split_runs(model, monkeypatch)
    assert not torch.allclose(loss2, loss1, rtol=1e-3)


def test_on_the_fly_vae_sample_is_keyed_too(monkeypatch):
    """Pictures encoded in the step: the posterior sample is one of the keyed draws."""
    from tests.tiny_models import TINY_VAE
    torch.manual_seed(0)
    model = LatentDiffusion(
        denoiser=dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                      depth=2, num_heads=2, num_classes=3, learn_sigma=True),
        vae=dict(type='AutoencoderKLWrapper', config=TINY_VAE, scale_factor=0.5),
        latent_shape=(4, 8, 8), num_classes=3, train_noise_seed=1).train()
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.normal_(0, 0.1)
    images, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0])
    MessageHub.get_current_instance().update_info('iter', 2)
    losses = {}
    for world in (1, 2):
        parts = []
        for rank in range(world):
            monkeypatch.setattr(latent_diffusion_module, 'get_dist_info',
                                lambda r=rank, w=world: (r, w))
            torch.manual_seed(rank)
            parts.append(model.loss(images=images[rank::world], labels=y[rank::world])['loss'])
        losses[world] = torch.stack(parts).mean()
    torch.testing.assert_close(losses[2], losses[1], rtol=1e-5, atol=1e-6)


def test_a_bad_noise_seed_is_named():
    for bad in ('zero', 1.5, True):
        with pytest.raises(ValueError, match='model.train_noise_seed must be an int'):
            tiny_model(DIFFUSIONS['dit'], seed=bad)
