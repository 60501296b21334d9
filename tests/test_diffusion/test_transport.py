"""Transport (SiT): path coefficients and conversions against closed forms, the loss
targets, the build-time checks, integrator convergence orders on an analytic flow, the
ODE log-likelihood, diffusers' flow-matching scheduler and NFE counts.

The analytic case: data ~ N(mu, s^2 I). Then p_t = N(alpha_t mu, (alpha_t^2 s^2 +
sigma_t^2) I) on every path, its score and velocity are closed forms, and the flow map
carries noise z to mu + s z exactly.
"""
import math

import pytest
import torch

from mmsora.diffusion import GVPPath, LinearPath, Transport, VPPath
from mmsora.registry import DIFFUSION

T = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.95], dtype=torch.float64)
MU, S = 1.5, 0.5


def gaussian_fields(path, x, t):
    """Closed-form velocity and score of p_t for data N(MU, S^2)."""
    t = t.view(-1, *([1] * (x.ndim - 1)))
    a, da = path.alpha(t)
    sg, dsg = path.sigma(t)
    var = a**2 * S**2 + sg**2
    score = -(x - a * MU) / var
    velocity = da * MU + (x - a * MU) * (a * da * S**2 + sg * dsg) / var
    return velocity, score


def analytic_model(transport, prediction=None):
    """The exact model of ``prediction`` for the Gaussian data (given SiT's time)."""
    prediction = prediction or transport.prediction

    def model(x, t):
        velocity, score = gaussian_fields(transport.path, x, t)
        if prediction == 'velocity':
            return velocity
        if prediction == 'score':
            return score
        sigma = transport.path.sigma(t.view(-1, *([1] * (x.ndim - 1))))[0]
        return -score * sigma  # noise = -sigma * score
    return model


# --------------------------------------------------------------------------- #
#                                     Paths                                    #
# --------------------------------------------------------------------------- #
def test_path_coefficients_match_closed_forms():
    lin, gvp, vp = LinearPath(), GVPPath(), VPPath(sigma_min=0.1, sigma_max=20.0)
    torch.testing.assert_close(lin.alpha(T)[0], T)
    torch.testing.assert_close(lin.sigma(T)[0], 1 - T)
    torch.testing.assert_close(gvp.alpha(T)[0], torch.sin(math.pi * T / 2))
    torch.testing.assert_close(gvp.sigma(T)[0], torch.cos(math.pi * T / 2))
    # VP (Song et al. 2021) in SiT's time tau = 1 - t: alpha = exp(-1/2 int_0^tau beta),
    # beta(s) = 0.1 + 19.9 s; the integral by the trapezoid rule on a fine grid.
    for t in T.tolist():
        s = torch.linspace(0, 1 - t, 20001, dtype=torch.float64)
        integral = torch.trapezoid(0.1 + 19.9 * s, s)
        alpha = torch.exp(-0.5 * integral)
        torch.testing.assert_close(vp.alpha(torch.tensor([t], dtype=torch.float64))[0],
                                   alpha.view(1), rtol=1e-7, atol=1e-10)
    for path in (gvp, vp):  # variance preserving: alpha^2 + sigma^2 = 1
        torch.testing.assert_close(path.alpha(T)[0]**2 + path.sigma(T)[0]**2,
                                   torch.ones_like(T))


@pytest.mark.parametrize('path', [LinearPath(), GVPPath(), VPPath()], ids=type)
def test_path_derivatives_match_finite_differences(path):
    h = 1e-6
    for fn in (path.alpha, path.sigma):
        numeric = (fn(T + h)[0] - fn(T - h)[0]) / (2 * h)
        torch.testing.assert_close(fn(T)[1], numeric, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(path.d_alpha_alpha_ratio(T), path.alpha(T)[1] / path.alpha(T)[0])


@pytest.mark.parametrize('path', ['Linear', 'GVP', 'VP'])
@pytest.mark.parametrize('prediction', ['velocity', 'score', 'noise'])
def test_conversions_give_the_closed_form_velocity_and_score(path, prediction):
    transport = Transport(path=path, prediction=prediction)
    x = torch.randn(5, 3, dtype=torch.float64)
    velocity, score = transport.velocity_and_score(analytic_model(transport), x, T, {})
    true_velocity, true_score = gaussian_fields(transport.path, x, T)
    torch.testing.assert_close(velocity, true_velocity)
    torch.testing.assert_close(score, true_score)


# --------------------------------------------------------------------------- #
#                                     Loss                                     #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('prediction, weight, expected_weight', [
    ('velocity', None, None),
    ('noise', None, lambda t: torch.ones_like(t)),
    ('noise', 'likelihood', lambda t: 1 / (t * (1 - t))),  # drift_var / sigma^2
    ('score', 'velocity', lambda t: 1 / t**2),              # (drift_var / sigma)^2
])
def test_loss_targets_and_weights_on_the_linear_path(prediction, weight, expected_weight):
    transport = Transport(prediction=prediction, loss_weight=weight)
    data = torch.randn(6, 2, 3, 3)
    seen = {}

    def model(x, t):
        seen.update(x=x, t=t)
        return torch.full_like(x, 0.3)

    torch.manual_seed(0)
    loss = transport.loss(model, data)['loss']
    torch.manual_seed(0)  # SiT's draws in SiT's order (Transport.sample): the noise,
    noise = torch.randn_like(data)  # then t in [eps, 1 - eps]
    t = transport.train_eps + (1 - 2 * transport.train_eps) * torch.rand(6) \
        if prediction != 'velocity' else torch.rand(6)
    tb = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen['t'], t)
    torch.testing.assert_close(seen['x'], tb * data + (1 - tb) * noise)
    if prediction == 'velocity':
        expected = ((0.3 - (data - noise))**2).mean((1, 2, 3))
    elif prediction == 'noise':
        expected = expected_weight(t) * ((0.3 - noise)**2).mean((1, 2, 3))
    else:
        expected = expected_weight(t) * ((0.3 * (1 - tb) + noise)**2).mean((1, 2, 3))
    torch.testing.assert_close(loss, expected)


def test_logit_normal_times_and_the_dit_timestep_convention():
    transport = Transport(time_dist='logit_normal', logit_mean=0.5, logit_std=0.8,
                          timestep_convention='dit')
    torch.manual_seed(0)
    t = transport.sample_time(20000, 'cpu')
    noise_level = torch.logit(1 - t)  # SD3: the noise level is logit-normal
    assert abs(noise_level.mean() - 0.5) < 0.03 and abs(noise_level.std() - 0.8) < 0.03
    seen = {}

    def model(x, t):
        seen['t'] = t
        return x

    torch.manual_seed(1)
    transport.loss(model, torch.randn(4, 2))
    torch.manual_seed(1)
    torch.randn(4, 2), torch.randn(4, 2)  # the data drawn above, then the noise (SiT's
    torch.testing.assert_close(seen['t'], 1000 * (1 - transport.sample_time(4, 'cpu')))  # order)


def test_a_learned_sigma_output_is_cut_to_its_first_half():
    transport = Transport()
    data = torch.randn(3, 2, 4)
    torch.manual_seed(0)
    cut = transport.loss(lambda x, t: torch.cat([x, 7 + x], 1), data)['loss']
    torch.manual_seed(0)
    plain = transport.loss(lambda x, t: x, data)['loss']
    torch.testing.assert_close(cut, plain)


# --------------------------------------------------------------------------- #
#                             Build-time validation                            #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('kwargs, message', [
    (dict(path='Cosine'), r"path='Cosine' is not one of \['Linear', 'GVP', 'VP'\]"),
    (dict(prediction='x0'), r"prediction='x0' is not one of"),
    (dict(loss_weight='likelihood'), 'a velocity loss is unweighted'),
    (dict(prediction='noise', train_eps=0), r'train_eps=0 .* divides by sigma_t = 0'),
    (dict(path='VP', sample_eps=0), r"sample_eps=0 .* VP path's sigma_t is 0"),
    (dict(time_dist='beta'), "time_dist='beta' is not one of"),
    (dict(timestep_convention='sd3'), "timestep_convention='sd3' is not one of"),
])
def test_invalid_combinations_fail_at_build(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DIFFUSION.build(dict(type='Transport', **kwargs))


def test_sit_default_eps():
    assert (Transport().train_eps, Transport().sample_eps) == (0, 0)
    assert (Transport(path='VP').train_eps, Transport(path='VP').sample_eps) == (1e-5, 1e-3)
    noise = Transport(path='GVP', prediction='noise')
    assert (noise.train_eps, noise.sample_eps) == (1e-3, 1e-3)


@pytest.mark.parametrize('transport, sampler, options, message', [
    (Transport(), 'ddim', {}, r"unknown sampler 'ddim' for Transport; choose one of "
                              r"\['ode_euler', 'ode_heun', 'ode_dopri5', 'sde_euler'"),
    (Transport(), 'ode_euler', dict(eta=0.0), "'ode_euler' takes no option eta"),
    (Transport(), 'sde_euler', dict(diffusion_form='SBDM'), "'SBDM' is infinite at t = 0"),
    (Transport(), 'sde_euler', dict(last_step='Median'), "last_step='Median' is not one of"),
    (Transport(path='GVP'), 'FlowMatchEulerDiscreteScheduler', {}, "needs path='Linear'"),
    (Transport(prediction='noise'), 'FlowMatchEulerDiscreteScheduler', {},
     "prediction='velocity'"),
])
def test_invalid_sampler_choices_fail_before_any_model_call(transport, sampler, options,
                                                            message):
    calls = []
    with pytest.raises(ValueError, match=message):
        transport.sample(lambda x, t: calls.append(1) or x, torch.randn(2, 3), {}, sampler,
                         10, **options)
    assert not calls


# --------------------------------------------------------------------------- #
#                           Integrators on an exact flow                        #
# --------------------------------------------------------------------------- #
def _flow_error(sampler, steps, **options):
    transport = Transport()
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = transport.sample(analytic_model(transport), z, {}, sampler, steps, **options)
    return (x - (MU + S * z)).abs().max().item(), transport.last_nfe


def test_euler_converges_linearly_and_heun_quadratically():
    euler = [_flow_error('ode_euler', n)[0] for n in (16, 32, 64)]
    heun = [_flow_error('ode_heun', n)[0] for n in (16, 32, 64)]
    euler_order = [math.log2(a / b) for a, b in zip(euler, euler[1:])]
    heun_order = [math.log2(a / b) for a, b in zip(heun, heun[1:])]
    assert all(0.8 < p < 1.2 for p in euler_order), euler_order
    assert all(1.7 < p < 2.3 for p in heun_order), heun_order

def test_dopri5_error_follows_its_tolerances():
    pytest.importorskip('torchdiffeq')
    loose, loose_nfe = _flow_error('ode_dopri5', 1)  # SiT's atol 1e-6, rtol 1e-3
    tight, tight_nfe = _flow_error('ode_dopri5', 1, atol=1e-9, rtol=1e-9)
    assert loose < 0.05 and tight < 1e-6, (loose, tight)
    assert 6 <= loose_nfe < tight_nfe < 2000


def test_nfe_counts():
    assert _flow_error('ode_euler', 10)[1] == 10
    assert _flow_error('ode_heun', 10)[1] == 20
    assert _flow_error('FlowMatchEulerDiscreteScheduler', 10)[1] == 10
    transport = Transport()
    model = analytic_model(transport)
    z = torch.randn(4, 2, dtype=torch.float64)
    # SiT's SDE: num_steps - 1 steps on the grid, then the Mean last step.
    transport.sample(model, z, {}, 'sde_euler', 10)
    assert transport.last_nfe == 10
    transport.sample(model, z, {}, 'sde_heun', 10)
    assert transport.last_nfe == 2 * 9 + 1
    transport.sample(model, z, {}, 'sde_euler', 10, last_step=None)
    assert transport.last_nfe == 9


def test_ode_solvers_match_torchdiffeq():
    torchdiffeq = pytest.importorskip('torchdiffeq')
    transport = Transport(path='GVP')
    model = analytic_model(transport)
    z = torch.randn(8, 2, dtype=torch.float64)
    grid = torch.linspace(0, 1, 13, dtype=torch.float64)

    def fn(t, x):
        return model(x, t.expand(len(x)))

    for ours, theirs in (('ode_euler', 'euler'), ('ode_heun', 'heun2')):
        ref = torchdiffeq.odeint(fn, z, grid, method=theirs)[-1]
        torch.testing.assert_close(transport.sample(model, z, {}, ours, 12), ref)


def test_flow_match_scheduler_is_euler_on_the_exact_flow():
    for steps, tol in ((50, 0.05), (200, 0.015)):
        error, _ = _flow_error('FlowMatchEulerDiscreteScheduler', steps)
        assert error < tol, (steps, error)
    # With SD3's shift the time grid changes but the flow's end point does not.
    transport = Transport()
    z = torch.randn(16, 2, dtype=torch.float64)
    x = transport.sample(analytic_model(transport), z, {}, 'FlowMatchEulerDiscreteScheduler',
                         100, shift=3.0)
    assert (x - (MU + S * z)).abs().max() < 0.05


def test_sde_samplers_reach_the_data_distribution():
    torch.manual_seed(0)  # the Brownian increments come from the global generator here
    transport = Transport()
    model = analytic_model(transport)
    z = torch.randn(4000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for sampler, options in (('sde_euler', {}), ('sde_heun', {}),
                             ('sde_euler', dict(diffusion_form='constant', last_step='Tweedie'))):
        x = transport.sample(model, z, {}, sampler, 100, **options)
        assert abs(x.mean() - MU) < 0.05 and abs(x.std() - S) < 0.05, (sampler, options)
    # SBDM is fine once sample_eps keeps t0 away from 0 (SiT's check_interval).
    sbdm = Transport(sample_eps=1e-3)
    x = sbdm.sample(analytic_model(sbdm), z, {}, 'sde_euler', 100, diffusion_form='SBDM')
    assert abs(x.mean() - MU) < 0.05 and abs(x.std() - S) < 0.05


def test_sde_noise_comes_from_each_samples_generator():
    transport = Transport()
    model = analytic_model(transport)
    z = torch.randn(3, 2, dtype=torch.float64)

    def run(seeds, rows):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return transport.sample(model, z[rows], {}, 'sde_euler', 20, generators=gens)

    both = run([5, 6], [0, 1])
    torch.testing.assert_close(both[1:], run([6], [1]))
    assert not torch.allclose(both[1:], run([7], [1]))


# --------------------------------------------------------------------------- #
#                                Log-likelihood                                #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('sampler, steps, tol', [('ode_dopri5', 1, 2e-3),
                                                 ('ode_heun', 50, 5e-3)])
def test_log_likelihood_matches_the_gaussian_density(sampler, steps, tol):
    pytest.importorskip('torchdiffeq')
    transport = Transport()
    x = MU + S * torch.randn(16, 3, generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
    out = transport.log_likelihood(analytic_model(transport), x, sampler=sampler,
                                   num_steps=steps)
    exact = torch.distributions.Normal(MU, S).log_prob(x).sum(1)
    torch.testing.assert_close(out['logp'], exact, rtol=0, atol=tol * 3)
    torch.testing.assert_close(out['prior'], (x - MU) / S, rtol=0, atol=tol)
    torch.testing.assert_close(out['bpd'], -exact / (3 * math.log(2)), rtol=0, atol=tol * 3)
