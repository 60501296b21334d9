"""GaussianDiffusion against closed forms, scipy and diffusers' schedulers."""
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from scipy import integrate, stats

from mmsora.diffusion import (GaussianDiffusion, discretized_gaussian_log_likelihood,
                              normal_kl, space_timesteps)
from mmsora.registry import DIFFUSION

# Closed-form DiT schedule, written independently of the code under test.
BETAS = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
ACP = np.cumprod(1.0 - BETAS)
ACP_PREV = np.append(1.0, ACP[:-1])


def _diffusers_kwargs(**kwargs):
    return dict(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                beta_end=0.02, prediction_type='epsilon', clip_sample=False, **kwargs)


def _const_model(output, expected_t=None):
    """A model that returns ``output`` and checks the timesteps it receives."""

    def model(x, t, **kwargs):
        if expected_t is not None:
            assert t.tolist() == expected_t
        return output

    return model


# --------------------------------------------------------------------------- #
#                          Schedule and forward process                        #
# --------------------------------------------------------------------------- #
def test_linear_betas_closed_form():
    diffusion = GaussianDiffusion()
    assert diffusion.num_timesteps == 1000
    np.testing.assert_allclose(diffusion.betas, BETAS, rtol=1e-9)
    np.testing.assert_allclose(diffusion.alphas_cumprod, ACP, rtol=1e-12)
    # Fewer steps rescale the linear range by 1000 / T.
    short = GaussianDiffusion(num_timesteps=500)
    np.testing.assert_allclose(short.betas, np.linspace(2e-4, 0.04, 500), rtol=1e-9)


def test_cosine_betas_match_diffusers():
    diffusion = GaussianDiffusion(beta_schedule='squaredcos_cap_v2')
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule='squaredcos_cap_v2')
    np.testing.assert_allclose(diffusion.betas, ref.betas.double().numpy(), atol=1e-6)
    # improved-diffusion's name for it; an unknown name lists the known ones (it was a
    # NotImplementedError traceback naming none)
    np.testing.assert_array_equal(GaussianDiffusion(beta_schedule='cosine').betas,
                                  diffusion.betas)
    import pytest
    with pytest.raises(ValueError, match=r"unknown beta schedule 'cosin': 'linear' or "
                                         r"'squaredcos_cap_v2' \(also called 'cosine'\)"):
        GaussianDiffusion(beta_schedule='cosin')


def test_q_sample_and_q_mean_variance_closed_form():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 10, 500, 999])
    acp = torch.from_numpy(ACP[t.numpy()]).float().view(-1, 1, 1, 1)
    expected = acp.sqrt() * x0 + (1 - acp).sqrt() * eps
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise=eps), expected)
    mean, var, log_var = diffusion.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, acp.sqrt() * x0)
    torch.testing.assert_close(var, (1 - acp).expand_as(x0))
    log_ref = torch.from_numpy(np.log(1 - ACP[t.numpy()])).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(log_var, log_ref.expand_as(x0))
    # diffusers' forward process is the same.
    ref = DDPMScheduler(**_diffusers_kwargs())
    torch.testing.assert_close(
        diffusion.q_sample(x0, t, noise=eps), ref.add_noise(x0, eps, t), atol=1e-5, rtol=1e-5)


def test_q_posterior_closed_form_and_diffusers():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0, xt = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([1, 250, 999])
    tn = t.numpy()
    coef1 = BETAS[tn] * np.sqrt(ACP_PREV[tn]) / (1 - ACP[tn])
    coef2 = (1 - ACP_PREV[tn]) * np.sqrt(1 - BETAS[tn]) / (1 - ACP[tn])
    var = BETAS[tn] * (1 - ACP_PREV[tn]) / (1 - ACP[tn])

    def col(a):
        return torch.from_numpy(a).float().view(-1, 1, 1, 1)

    mean, variance, log_variance = diffusion.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(mean, col(coef1) * x0 + col(coef2) * xt)
    torch.testing.assert_close(variance, col(var).expand_as(x0))
    torch.testing.assert_close(log_variance, torch.log(col(var)).expand_as(x0))

    # diffusers: a DDPM step fed the true x0 lands on the posterior mean plus
    # sqrt(posterior variance) * noise. (diffusers' float32 alphas_cumprod lose ~1e-4 in
    # 1 - acp_1 / acp_0 at t = 1, hence the tolerance.)
    ref = DDPMScheduler(**_diffusers_kwargs(variance_type='fixed_small'))
    ref.config.prediction_type = 'sample'
    ref.set_timesteps(1000)
    for i, ti in enumerate(t.tolist()):
        gen = torch.Generator().manual_seed(i)
        prev = ref.step(x0[i:i + 1], ti, xt[i:i + 1], generator=gen).prev_sample
        noise = torch.randn(x0[i:i + 1].shape, generator=torch.Generator().manual_seed(i))
        ref_var = ref._get_variance(ti)
        torch.testing.assert_close(variance[i, 0, 0, 0], ref_var, rtol=1e-3, atol=1e-8)
        torch.testing.assert_close(prev - ref_var.sqrt() * noise, mean[i:i + 1],
                                   atol=3e-4, rtol=1e-4)


# --------------------------------------------------------------------------- #
#                                  Respacing                                   #
# --------------------------------------------------------------------------- #
def test_ddim_step_counts_its_stride_cannot_make_are_named():
    """--steps 60 with DiT's DDIM said 'cannot create exactly 1000 steps with an
    integer stride' (IDDPM's message, naming the process, not the count); 1 step was
    refused too (the stride search stopped short of the process length)."""
    assert space_timesteps(1000, 'ddim1') == {0}
    with pytest.raises(ValueError, match=r'^DDIM cannot take 60 steps: its integer stride '
                                         r'over the 1000 timesteps .* gives 59 or 63 steps; '
                                         r"give one of those, or spacing='even' "):
        space_timesteps(1000, 'ddim60')


def test_space_timesteps_hand_computed():
    steps = sorted(space_timesteps(1000, '250'))
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    # stride 999 / 249 = 4.012...: 0, 4.01, 8.02, ..., 60.18, 64.19 (rounded)
    assert steps[:17] == [0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64]
    assert steps[63] == 253  # 63 * 4.012 = 252.76
    assert sorted(space_timesteps(1000, 'ddim50')) == list(range(0, 1000, 20))
    assert sorted(space_timesteps(1000, 'ddim25')) == list(range(0, 1000, 40))
    steps = sorted(space_timesteps(300, '10,15,20'))
    assert len(steps) == 45
    assert steps[:10] == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]  # stride 99 / 9 = 11
    assert steps[10:13] == [100, 107, 114] and steps[24] == 199  # stride 99 / 14
    assert steps[25:28] == [200, 205, 210] and steps[-1] == 299  # stride 99 / 19
    assert space_timesteps(300, [10, 15, 20]) == space_timesteps(300, '10,15,20')
    assert space_timesteps(10, '10') == set(range(10))
    with pytest.raises(ValueError):
        space_timesteps(10, '11')


def test_respaced_betas_and_timestep_map():
    diffusion = GaussianDiffusion().respace('ddim50')
    kept = np.arange(0, 1000, 20)
    assert diffusion.num_timesteps == 50 and diffusion.original_num_steps == 1000
    np.testing.assert_array_equal(diffusion.timestep_map, kept)
    np.testing.assert_allclose(diffusion.alphas_cumprod, ACP[kept], rtol=1e-12)
    expected_betas = 1 - ACP[kept] / np.append(1.0, ACP[kept][:-1])
    np.testing.assert_allclose(diffusion.betas, expected_betas, rtol=1e-12)
    assert diffusion.betas[0] == pytest.approx(1e-4)
    # Respacing through the constructor is the same.
    same = GaussianDiffusion(timestep_respacing='ddim50')
    np.testing.assert_array_equal(same.betas, diffusion.betas)
    # '' and None keep every step.
    np.testing.assert_array_equal(GaussianDiffusion(timestep_respacing='').timestep_map,
                                  np.arange(1000))


def test_build_from_registry():
    diffusion = DIFFUSION.build(dict(type='GaussianDiffusion', timestep_respacing='250'))
    assert isinstance(diffusion, GaussianDiffusion) and diffusion.num_timesteps == 250


# --------------------------------------------------------------------------- #
#                          One sampler step vs diffusers                       #
# --------------------------------------------------------------------------- #
def test_p_sample_step_matches_diffusers_learned_range():
    """One DDPM step of a learned-range DiT on the '250' respacing vs diffusers.

    diffusers' custom ``timesteps`` reproduce the respaced chain, and its
    ``learned_range`` variance interpolates exactly like IDDPM for t > 0. At t = 0 both
    add no noise, so the samples agree too; only the (unused) log variance differs there:
    IDDPM clips it to the t = 1 posterior variance, diffusers clamps the 0 to 1e-20.
    """
    diffusion = GaussianDiffusion(timestep_respacing='250')
    ref = DDPMScheduler(**_diffusers_kwargs(variance_type='learned_range'))
    timesteps = sorted(diffusion.timestep_map.tolist(), reverse=True)
    ref.set_timesteps(timesteps=timesteps)
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, 4)
    eps = torch.randn(1, 4, 4, 4)
    var_values = torch.rand(1, 4, 4, 4) * 2 - 1
    output = torch.cat([eps, var_values], dim=1)
    for i in [249, 120, 37, 1, 0]:
        orig_t = int(diffusion.timestep_map[i])
        model = _const_model(output, expected_t=[orig_t])
        ours = diffusion.p_sample(model, x, torch.tensor([i]),
                                  generator=torch.Generator().manual_seed(i))
        theirs = ref.step(output, orig_t, x, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(ours['pred_xstart'], theirs.pred_original_sample,
                                   atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(ours['sample'], theirs.prev_sample, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize('num_steps', [50, 60])
def test_the_ddim_sampler_takes_dit_codebases_steps_when_asked(num_steps):
    """sampler='ddim' with spacing='even' visits the timesteps of DiT's
    create_diffusion(str(N)), which Latte's and Open-Sora 1.0's sample.py run DDIM on
    (50: ... 958, 979, 999; any count), as its DDPM does; the default stays the DDIM
    paper's stride (... 960, 980; 60 steps refused, naming spacing='even')."""
    seen = []

    def model(x, t, **kwargs):
        seen.append(int(t[0]))
        return torch.zeros(1, 2, 2, 2)  # (learned sigma: eps and the variance's input)

    noise = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    even = 999 / (num_steps - 1)  # DiT's space_timesteps: round(i * frac_stride)
    GaussianDiffusion().sample(model, noise, {}, sampler='ddim', num_steps=num_steps,
                               spacing='even')
    assert seen == [round(i * even) for i in reversed(range(num_steps))]
    assert seen[:3] == ([999, 979, 958] if num_steps == 50 else [999, 982, 965])
    seen.clear()
    GaussianDiffusion().sample(model, noise, {}, sampler='ddpm', num_steps=num_steps)
    assert seen == [round(i * even) for i in reversed(range(num_steps))]
    seen.clear()
    if num_steps == 50:
        GaussianDiffusion().sample(model, noise, {}, sampler='ddim', num_steps=50)
        assert seen == list(range(980, -1, -20))
    else:
        with pytest.raises(ValueError, match="^DDIM cannot take 60 steps: .*spacing='even'"):
            GaussianDiffusion().sample(model, noise, {}, sampler='ddim', num_steps=60)
    with pytest.raises(ValueError, match=r"^sampler 'ddim' takes spacing='stride' .* got "
                                         r"'uniform'$"):
        GaussianDiffusion().sample(model, noise, {}, sampler='ddim', num_steps=10,
                                   spacing='uniform')


@pytest.mark.parametrize('eta', [0.0, 0.7])
def test_ddim_step_matches_diffusers(eta):
    """DDIM on 'ddim50' vs diffusers' DDIMScheduler (leading spacing, stride 20).

    IDDPM's alphas_cumprod_prev is 1.0 at the first kept step, which is diffusers'
    ``set_alpha_to_one=True`` (not ``False``, which would use alphas_cumprod[0]).
    """
    diffusion = GaussianDiffusion().respace('ddim50')
    ref = DDIMScheduler(**_diffusers_kwargs(set_alpha_to_one=True))
    ref.set_timesteps(50)
    assert ref.timesteps.tolist() == sorted(diffusion.timestep_map.tolist(), reverse=True)
    torch.manual_seed(0)
    x, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    output = torch.cat([eps, torch.zeros_like(eps)], dim=1)  # variance half is ignored
    for i in [49, 30, 1, 0]:
        orig_t = int(diffusion.timestep_map[i])
        model = _const_model(output, expected_t=[orig_t] * 2)
        ours = diffusion.ddim_sample(model, x, torch.tensor([i, i]), eta=eta,
                                     generator=torch.Generator().manual_seed(i))
        theirs = ref.step(eps, orig_t, x, eta=eta,
                          generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(ours['sample'], theirs.prev_sample, atol=2e-4, rtol=1e-4)

    # set_alpha_to_one=False is *not* DiT's last step.
    ref_off = DDIMScheduler(**_diffusers_kwargs(set_alpha_to_one=False))
    ref_off.set_timesteps(50)
    ours = diffusion.ddim_sample(_const_model(output), x, torch.tensor([0, 0]), eta=eta)
    assert not torch.allclose(ours['sample'], ref_off.step(eps, 0, x, eta=eta).prev_sample)


# --------------------------------------------------------------------------- #
#                                    Losses                                    #
# --------------------------------------------------------------------------- #
def _true_noise_model(noise, var_value, offset=0.0):
    """Predicts the true noise (+ offset) and a constant variance value."""

    def model(x, t):
        return torch.cat([noise + offset, torch.full_like(noise, var_value)], dim=1)

    return model


@pytest.mark.parametrize('var_value', [-1.0, 0.3])
@pytest.mark.parametrize('offset', [0.0, 0.1])
def test_training_losses_closed_form(var_value, offset):
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4).double(), torch.randn(3, 2, 4, 4).double()
    t = torch.tensor([1, 400, 999])
    tn = t.numpy()
    losses = diffusion.training_losses(
        _true_noise_model(noise, var_value, offset), x0, t, noise=noise)
    assert set(losses) == {'loss', 'mse', 'vb'}
    torch.testing.assert_close(losses['mse'], torch.full((3, ), offset**2).double())

    # KL between the true posterior and the model's Gaussian, in bits, closed form:
    # the model's x0 is off by -sqrt(1/acp - 1) * offset, its mean by coef1 times that.
    post_var = BETAS * (1 - ACP_PREV) / (1 - ACP)
    log_post = np.log(np.append(post_var[1], post_var[1:]))[tn]
    frac = (var_value + 1) / 2
    log_model = frac * np.log(BETAS[tn]) + (1 - frac) * log_post
    coef1 = BETAS[tn] * np.sqrt(ACP_PREV[tn]) / (1 - ACP[tn])
    mean_diff = coef1 * np.sqrt(1 / ACP[tn] - 1) * offset
    kl = 0.5 * (-1 + log_model - log_post + np.exp(log_post - log_model) +
                mean_diff**2 * np.exp(-log_model))
    np.testing.assert_allclose(losses['vb'].numpy(), kl / math.log(2), rtol=1e-3, atol=1e-7)
    torch.testing.assert_close(losses['loss'], losses['mse'] + losses['vb'])


def test_loss_types():
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    t = torch.tensor([5, 60])
    model = _true_noise_model(noise, 0.5, offset=0.2)
    plain = GaussianDiffusion(timestep_respacing='250').training_losses(model, x0, t, noise=noise)
    rescaled = GaussianDiffusion(rescale_learned_sigmas=True, timestep_respacing='250')
    rescaled = rescaled.training_losses(model, x0, t, noise=noise)
    torch.testing.assert_close(rescaled['vb'], plain['vb'] * 0.25)  # 250 / 1000
    torch.testing.assert_close(rescaled['mse'], plain['mse'])
    kl = GaussianDiffusion(use_kl=True, timestep_respacing='250')
    kl = kl.training_losses(model, x0, t, noise=noise)
    assert set(kl) == {'loss'}
    torch.testing.assert_close(kl['loss'], plain['vb'] * 250)

    # Fixed variances: MSE only; x0 prediction regresses x0.
    fixed = GaussianDiffusion(learn_sigma=False)
    out = fixed.training_losses(lambda x, t: noise, x0, t, noise=noise)
    assert set(out) == {'loss', 'mse'}
    torch.testing.assert_close(out['loss'], torch.zeros(2))
    xstart = GaussianDiffusion(learn_sigma=False, predict_xstart=True)
    out = xstart.training_losses(lambda x, t: x0 + 0.5, x0, t, noise=noise)
    torch.testing.assert_close(out['loss'], torch.full((2, ), 0.25))


def test_vb_does_not_backprop_into_mean():
    """The VLB term trains the variance only (the mean output is detached)."""

    class Model(torch.nn.Module):

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Parameter(torch.tensor(0.5))
            self.b = torch.nn.Parameter(torch.tensor(0.1))

        def forward(self, x, t):
            return torch.cat([self.a * x, self.b * torch.ones_like(x)], dim=1)

    model = Model()
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 4, 4)
    losses = GaussianDiffusion().training_losses(model, x0, torch.tensor([3, 700]))
    losses['vb'].sum().backward()
    assert model.a.grad is None or model.a.grad == 0
    assert model.b.grad is not None and model.b.grad != 0
    model.zero_grad()
    losses = GaussianDiffusion().training_losses(model, x0, torch.tensor([3, 700]))
    losses['mse'].sum().backward()
    assert model.a.grad != 0


# --------------------------------------------------------------------------- #
#                              Likelihood helpers                              #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('m1,s1,m2,s2', [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 1.5),
                                         (1.0, 2.0, 0.5, 0.7)])
def test_normal_kl_vs_scipy(m1, s1, m2, s2):
    p, q = stats.norm(m1, s1), stats.norm(m2, s2)
    ref, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), -30, 30)
    ours = normal_kl(torch.tensor(m1), torch.tensor(2 * math.log(s1)), m2, 2 * math.log(s2))
    assert ours.item() == pytest.approx(ref, abs=1e-6)


def test_discretized_gaussian_log_likelihood_vs_scipy():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.2, 0.7, 1.0]).double()
    means = torch.tensor([-0.9, -0.45, 0.02, 0.1, 0.75, 0.95]).double()
    scales = torch.tensor([0.1, 0.05, 0.2, 0.3, 0.08, 0.1]).double()
    ours = discretized_gaussian_log_likelihood(x, means=means, log_scales=scales.log())
    xn, mn, sn = x.numpy(), means.numpy(), scales.numpy()
    upper = stats.norm.cdf((xn + 1 / 255 - mn) / sn)
    lower = stats.norm.cdf((xn - 1 / 255 - mn) / sn)
    ref = np.log(np.where(xn < -0.999, upper, np.where(xn > 0.999, 1 - lower, upper - lower)))
    # The original uses a tanh approximation of the normal CDF (error ~1e-4; here up
    # to 8.6e-4 in the log-likelihoods).
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-3, rtol=0)


# --------------------------------------------------------------------------- #
#                  Full sampling loops with an analytic denoiser               #
# --------------------------------------------------------------------------- #
MU, STD = 0.5, 0.3


def _gaussian_eps_model(learn_sigma):
    """Exact epsilon predictor for data ~ N(MU, STD^2 I), called with original t."""

    def model(x, t):
        acp = torch.from_numpy(ACP[t.numpy()]).float().view(-1, *([1] * (x.ndim - 1)))
        # E[eps | x_t] for x_t = sqrt(acp) x0 + sqrt(1 - acp) eps.
        eps = (1 - acp).sqrt() * (x - acp.sqrt() * MU) / (acp * STD**2 + 1 - acp)
        if learn_sigma:
            return torch.cat([eps, -torch.ones_like(eps)], dim=1)  # posterior variance
        return eps

    return model


def _expected_std(respacing, sampler):
    """Std of the samples the discretised chain produces for N(MU, STD^2) data.

    With the exact epsilon predictor every step is affine in x_t, so the sample
    variance follows a scalar recursion from Var(x_T) = 1 (closed form, float64).
    """
    kept = sorted(space_timesteps(1000, respacing))
    acp = ACP[kept]
    acp_prev = np.append(1.0, acp[:-1])
    var = 1.0
    for a, a_prev in zip(acp[::-1], acp_prev[::-1]):
        v_t = a * STD**2 + 1 - a  # Var(x_t) under the data distribution
        if sampler == 'ddim':
            gain = (np.sqrt(a_prev * a) * STD**2 + np.sqrt((1 - a_prev) * (1 - a))) / v_t
            var = gain**2 * var
        else:
            beta = 1 - a / a_prev
            gain = (beta * np.sqrt(a_prev) / (1 - a) * np.sqrt(a) * STD**2 / v_t +
                    (1 - a_prev) * np.sqrt(1 - beta) / (1 - a))
            var = gain**2 * var + beta * (1 - a_prev) / (1 - a)  # posterior variance
    return math.sqrt(var)


@pytest.mark.parametrize('sampler,respacing,learn_sigma', [
    ('ddpm', '50', True),
    ('ddpm', '100', False),
    ('ddim', 'ddim25', True),
])
def test_sampling_loop_gaussian_data(sampler, respacing, learn_sigma):
    """Few-step chains land on the (closed-form) std of their discretisation."""
    diffusion = GaussianDiffusion(
        learn_sigma=learn_sigma, sigma_small=True, timestep_respacing=respacing)
    model = _gaussian_eps_model(learn_sigma)
    shape = (2000, 1, 4, 4)
    gen = torch.Generator().manual_seed(0)
    if sampler == 'ddpm':
        samples = diffusion.p_sample_loop(model, shape, generator=gen)
    else:
        samples = diffusion.ddim_sample_loop(model, shape, generator=gen)
    assert samples.shape == shape
    assert samples.mean().item() == pytest.approx(MU, abs=0.01)
    assert samples.std().item() == pytest.approx(_expected_std(respacing, sampler), rel=0.02)


@pytest.mark.parametrize('sampler', ['ddpm', 'ddim'])
def test_full_chain_recovers_data_distribution(sampler):
    """All 1000 steps turn noise into N(MU, STD^2) samples (to ~3 standard errors)."""
    diffusion = GaussianDiffusion()
    model = _gaussian_eps_model(learn_sigma=True)
    shape = (500, 1, 2, 2)  # 2000 values: mean s.e. 0.007, std s.e. 1.6 %
    gen = torch.Generator().manual_seed(0)
    loop = diffusion.p_sample_loop if sampler == 'ddpm' else diffusion.ddim_sample_loop
    samples = loop(model, shape, generator=gen)
    assert samples.mean().item() == pytest.approx(MU, abs=0.02)
    assert samples.std().item() == pytest.approx(STD, rel=0.05)


def test_sampling_loop_is_reproducible_and_5d():
    diffusion = GaussianDiffusion(timestep_respacing='ddim5')
    model = _gaussian_eps_model(learn_sigma=True)
    shape = (2, 3, 2, 4, 4)  # (N, C, T, H, W)
    a = diffusion.p_sample_loop(model, shape, generator=torch.Generator().manual_seed(1))
    b = diffusion.p_sample_loop(model, shape, generator=torch.Generator().manual_seed(1),
                                progress=True)
    assert a.shape == shape
    torch.testing.assert_close(a, b)
    c = diffusion.ddim_sample_loop(model, shape, eta=1.0,
                                   generator=torch.Generator().manual_seed(1))
    assert c.shape == shape and torch.isfinite(c).all()
    steps = list(diffusion.ddim_sample_loop_progressive(model, shape, noise=torch.randn(shape)))
    assert len(steps) == 5


def test_5d_inputs():
    diffusion = GaussianDiffusion()
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    t = torch.tensor([0, 500])
    losses = diffusion.training_losses(_true_noise_model(noise, 0.0), x0, t, noise=noise)
    assert all(v.shape == (2, ) for v in losses.values())
    torch.testing.assert_close(losses['mse'], torch.zeros(2))
    # A video with all-equal frames behaves like the image it repeats.
    frame = x0[:, :, :1].expand(-1, -1, 3, -1, -1).contiguous()
    frame_noise = noise[:, :, :1].expand(-1, -1, 3, -1, -1).contiguous()
    video = diffusion.training_losses(
        _true_noise_model(frame_noise, 0.3, 0.1), frame, t, noise=frame_noise)
    image = diffusion.training_losses(
        _true_noise_model(noise[:, :, 0], 0.3, 0.1), x0[:, :, 0], t, noise=noise[:, :, 0])
    for key in ('loss', 'mse', 'vb'):
        torch.testing.assert_close(video[key], image[key])
    out = diffusion.p_sample(_true_noise_model(noise, 0.0), x0, t)
    assert out['sample'].shape == x0.shape


class HostCopies:
    """Counts copies from CPU tensors to another device (``aten._to_copy`` calls):
    ``torch.from_numpy(a).to(device)``, ``torch.as_tensor(a, device=device)``."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if (func is torch.ops.aten._to_copy.default and args[0].device.type == 'cpu'
                        and out.device.type != 'cpu'):
                    outer.count += 1
                return out

        self.count, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


@pytest.mark.parametrize('learn_sigma', [True, False])
def test_tables_reach_a_device_once(learn_sigma):
    """Off the CPU the coefficient tables (and the timestep map) are read from tensors
    kept per device: after the first training step nothing is copied from the host
    again, in training or sampling (on a GPU each such copy blocks until the work
    queued before it is done). The meta device stands in for a GPU here."""
    diffusion = GaussianDiffusion(learn_sigma=learn_sigma, timestep_respacing='ddim5')

    def model(x, t):
        assert t.device.type == 'meta' and t.dtype == torch.long
        eps = 0.1 * x
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if learn_sigma else eps

    shape = (3, 4, 2, 2)
    x0 = torch.empty(shape, device='meta')
    with HostCopies() as first:
        diffusion.loss(model, x0)  # copies the tables it reads
    assert first.count == len(diffusion._device_tables) > 0
    with HostCopies() as copies:
        losses = diffusion.loss(model, x0)
        assert losses['loss'].shape == (3,) and losses['loss'].device.type == 'meta'
        for _ in range(2):
            diffusion.p_sample_loop(model, shape, device='meta')
            diffusion.ddim_sample_loop(model, shape, device='meta')
    # sampling reads tables the loss does not: each copied once
    assert copies.count == len(diffusion._device_tables) - first.count
    if learn_sigma:  # the loss's variational bound has read the sampler's tables
        assert copies.count <= 2  # DDIM's alphas_cumprod and alphas_cumprod_prev
    with HostCopies() as again:
        diffusion.loss(model, x0)
        diffusion.p_sample_loop(model, shape, device='meta')
    assert again.count == 0
    assert {d.type for _, d in diffusion._device_tables} == {'meta'}
    assert diffusion.log_betas[1] == np.log(diffusion.betas[1])
    # pickled without the device copies
    import pickle
    assert pickle.loads(pickle.dumps(diffusion))._device_tables == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU')
def test_no_host_sync_in_a_step_on_a_gpu():
    """On a GPU, after a first step: a training step, a DDPM and a DDIM step make no
    synchronising call (torch's sync debug mode raises on one), and the cached tables
    give the CPU's values."""
    diffusion = GaussianDiffusion(learn_sigma=True, timestep_respacing='ddim5')
    x0 = torch.randn(3, 4, 2, 2, device='cuda')

    def model(x, t):
        return torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)

    diffusion.loss(model, x0)
    t = torch.full((3,), 2, device='cuda')
    diffusion.ddim_sample(model, x0, t)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        diffusion.loss(model, x0)
        diffusion.p_sample(model, x0, t)
        diffusion.ddim_sample(model, x0, t)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for name in ('sqrt_alphas_cumprod', 'posterior_log_variance_clipped', 'log_betas',
                 'alphas_cumprod_prev'):
        assert torch.equal(diffusion._extract(name, t, (3, 1)).cpu(),
                           diffusion._extract(name, t.cpu(), (3, 1)))
