"""Transport.log_likelihood checks its arguments as Transport.sample does, before any
model call (0 steps gave the Gaussian prior of x as its likelihood, zero tolerances
torchdiffeq's 'underflow in dt 0.0', a guided model ran silently, latents of the wrong
channel count met a convolution's RuntimeError); and a sampler option's or an
objective setting's value near a valid one is hinted ('mean': 'Mean', 'none': None)."""
import pytest
import torch

from mmsora.diffusion import Transport
from mmsora.models import DiT


def counting(calls):
    """A model function that records its calls and returns zeros (velocity 0; through
    x, so that the divergence's autograd has a graph)."""
    def model(x, t, **kwargs):
        calls.append(1)
        return 0 * x
    return model


def tiny_dit():
    torch.manual_seed(0)
    return DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
               num_heads=2, num_classes=3, class_dropout_prob=0.1, learn_sigma=False).eval()


def refusal(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


# --------------------------------------------------------------------------- #
#                      The solver, its steps and tolerances                     #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('sampler, num_steps, options', [
    ('ode_euler', 0, {}),            # (ran no step: logp was the prior of x)
    ('ode_heun', 2.5, {}),
    ('ode_dopri5', 50, dict(atol=0, rtol=0)),  # (torchdiffeq's AssertionError)
    ('ode_dopri5', 50, dict(rtol=float('nan'))),
])
def test_log_likelihood_refuses_what_sample_refuses_in_its_words(sampler, num_steps,
                                                                 options):
    transport, x, calls = Transport(), torch.randn(2, 3), []
    ours = refusal(lambda: transport.log_likelihood(counting(calls), x, sampler=sampler,
                                                    num_steps=num_steps, **options))
    theirs = refusal(lambda: transport.sample(counting(calls), x, {}, sampler, num_steps,
                                              **options))
    assert ours == theirs
    assert not calls and transport.last_nfe == 0


@pytest.mark.parametrize('sampler, options, message', [
    ('dopri5', {}, r"unknown sampler 'dopri5' for Transport.log_likelihood; choose one of "
                   r"\['ode_dopri5', 'ode_heun', 'ode_euler'\]; did you mean ode_dopri5\?$"),
    ('sde_euler', {}, r"^log_likelihood integrates the probability-flow ODE, which sampler "
                      r"'sde_euler' does not solve: choose one of \['ode_dopri5'"),
    ('ode_heun', dict(atol=1e-4), r"^sampler 'ode_heun' takes no option atol "),
])
def test_log_likelihood_solver_name_and_options(sampler, options, message):
    calls = []
    with pytest.raises(ValueError, match=message):
        Transport().log_likelihood(counting(calls), torch.randn(2, 3), sampler=sampler,
                                   num_steps=4, **options)
    assert not calls


def test_fixed_step_solver_keeps_the_default_tolerances_and_runs():
    transport, calls = Transport(), []
    out = transport.log_likelihood(counting(calls), torch.zeros(2, 3), sampler='ode_heun',
                                   num_steps=3)
    assert transport.last_nfe == len(calls) == 6
    # velocity 0: z = x, no divergence; log N(0, I) in 3 dimensions
    torch.testing.assert_close(out['logp'], torch.full((2,), -1.5 * torch.log(
        torch.tensor(2 * torch.pi)).item()))


# --------------------------------------------------------------------------- #
#                                    Guidance                                   #
# --------------------------------------------------------------------------- #
def test_log_likelihood_refuses_a_guided_model_as_sit_does():
    dit, x = tiny_dit(), torch.randn(2, 4, 8, 8)
    y = torch.tensor([0, 1])
    guided = dict(y=torch.cat([y, torch.full_like(y, 3)]), cfg_scale=4.0)
    with pytest.raises(ValueError, match=r'^log_likelihood is incompatible with guidance '
                                         r'\(cfg_scale=4.0 given; SiT refuses it too\): '
                                         r'pass the unguided model \(model.denoiser\)'):
        Transport().log_likelihood(dit.forward_with_cfg, torch.cat([x, x]), guided,
                                   sampler='ode_euler', num_steps=2)
    calls = []  # (any model function given cfg_scale, before it is called)
    with pytest.raises(ValueError, match='incompatible with guidance'):
        Transport().log_likelihood(counting(calls), torch.randn(2, 3), dict(cfg_scale=1.5),
                                   sampler='ode_euler', num_steps=2)
    assert not calls


# --------------------------------------------------------------------------- #
#                               x's channel count                               #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('method', [False, True])
def test_log_likelihood_checks_x_against_the_denoisers_channels(method):
    dit = tiny_dit()
    model_fn = dit.forward if method else dit
    y = dict(y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'^x has shape \(2, 3, 8, 8\), but DiT takes 4 '
                                         r'channels: pass latents \(N, 4, \.\.\.\)'):
        Transport().log_likelihood(model_fn, torch.randn(2, 3, 8, 8), y,
                                   sampler='ode_euler', num_steps=1)
    transport = Transport()
    out = transport.log_likelihood(model_fn, torch.randn(2, 4, 8, 8), y,
                                   sampler='ode_euler', num_steps=1)
    assert out['logp'].shape == (2,) and transport.last_nfe == 1


# --------------------------------------------------------------------------- #
#                     Option values near a valid one: a hint                    #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('options, hint', [
    (dict(last_step='none'), "did you mean None (the value, not the word 'none')?"),
    (dict(last_step='mean'), "did you mean 'Mean'?"),
    (dict(last_step='TWEEDIE'), "did you mean 'Tweedie'?"),
    # (SiT's own path table's spelling)
    (dict(diffusion_form='inccreasing-decreasing'), "did you mean 'increasing-decreasing'?"),
    (dict(diffusion_form='Sigma'), "did you mean 'sigma'?"),
    (dict(diffusion_form='sbdm'), "did you mean 'SBDM'?"),
])
def test_sde_option_values_near_a_valid_one_are_hinted(options, hint):
    (name, value), = options.items()
    message = refusal(lambda: Transport().check_sample_options('sde_euler', 10, **options))
    assert message.startswith(f'{name}={value!r} is not one of [')
    assert message.endswith(f']; {hint}')


def test_values_far_from_any_choice_get_no_hint():
    for options in (dict(last_step='x'), dict(last_step=3), dict(diffusion_form='cosine')):
        message = refusal(lambda: Transport().check_sample_options('sde_euler', 10, **options))
        assert 'did you mean' not in message and message.endswith(']')


@pytest.mark.parametrize('kwargs, hint', [
    (dict(path='linear'), "path='linear' is not one of ['Linear', 'GVP', 'VP']; did you "
                          "mean 'Linear'?"),
    (dict(prediction='Velocity', loss_weight=None), "did you mean 'velocity'?"),
    (dict(prediction='score', loss_weight='none'), "loss_weight='none' is not one of "
                                                   "[None, 'velocity', 'likelihood']; did "
                                                   "you mean None (the value, not the word "
                                                   "'none')?"),
])
def test_objective_settings_near_a_valid_one_are_hinted(kwargs, hint):
    assert refusal(lambda: Transport(**kwargs)).endswith(hint)
