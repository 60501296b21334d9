"""Sampling settings that passed the checks and sampled otherwise than asked (review H4):
a solver order above the solver's highest (DPM-Solver++'s solver_order=4 stepped as 3),
a word outside a setting's list (DDPMScheduler's variance_type='x' stepped as
'fixed_small', DPM-Solver's algorithm_type='deis' as 'dpmsolver++'); and a step count
given as a 0-d integer tensor, which every sampler now takes as the int (it was
refused with a hint, as DDPM's respacing read it as 'tensor(4)')."""
import glob
import os.path as osp
import re

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from mmsora.diffusion import GaussianDiffusion, Transport
from mmsora.diffusion.scheduler_sampling import _HIGHEST_ORDERS, check_sample_settings
from tests.sampling_refusals import never_called, refused_alike

DPM = 'DPMSolverMultistepScheduler'
UNIPC = 'UniPCMultistepScheduler'
FLOW = 'FlowMatchEulerDiscreteScheduler'


def _diffusers_loop(scheduler, steps, seed=0):
    """diffusers' own loop with an epsilon model 0.1 x, noise and steps seeded."""
    scheduler.set_timesteps(steps)
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
    x = x * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(x, t)
        x = scheduler.step(0.1 * model_in, t, x, generator=generator).prev_sample
    return x


# ------------------------------------------------------------ 1. a solver's highest order
def test_why_an_order_above_the_highest_was_no_help():
    """diffusers' DPM-Solver++ takes solver_order=4 and steps it as order 3."""
    fourth, third = (_diffusers_loop(DPMSolverMultistepScheduler(solver_order=order), 6)
                     for order in (4, 3))
    torch.testing.assert_close(fourth, third, rtol=0, atol=0)


@pytest.mark.parametrize('value', [4, 10, np.int64(4), torch.tensor(5)])
def test_an_order_above_the_solvers_highest_is_refused_naming_its_range(value):
    refused_alike(GaussianDiffusion, DPM, dict(solver_order=value),
             f'solver_order must be a whole number in [1, 3] (a setting of {DPM}, whose '
             f'highest order is 3; its default: 2), got {value!r}')


def test_orders_up_to_the_highest_pass_and_unipc_has_no_ceiling():
    diffusion = GaussianDiffusion(learn_sigma=False)
    for order in (1, 2, 3):
        diffusion.check_sample_options(DPM, 10, solver_order=order)
    for order in (4, 6):  # (diffusers: 'any positive integer')
        diffusion.check_sample_options(UNIPC, 10, solver_order=order)
        check_sample_settings(diffusion, dict(sampler=UNIPC, num_steps=10, solver_order=order))


def _class_source(name):
    """The source of diffusers' scheduler class ``name``, its docstring first, read from
    its file (without torchsde, CosineDPMSolver's class is a dummy without one)."""
    folder = osp.dirname(diffusers.schedulers.__file__)
    for path in sorted(glob.glob(osp.join(folder, 'scheduling_*.py'))):
        with open(path, encoding='utf-8') as f:
            text = f.read()
        if f'class {name}(' in text:
            return text.split(f'class {name}(', 1)[1]
    raise AssertionError(f'{name} not found in {folder}')


def test_the_highest_orders_are_those_diffusers_docstrings_give():
    """The table against each solver's own docstring ("The DPMSolver order which can be
    `1` or `2` or `3`"), so a diffusers that adds an order is noticed."""
    for name, orders in _HIGHEST_ORDERS.items():
        doc = _class_source(name)
        for key, highest in orders.items():
            found = re.search(rf'{key} \(`int`[^)]*\):\s+The [\w ]+? order which can be '
                              r"((?:[`']\d[`'](?: or )?)+)", doc)
            assert found, (name, key)
            assert [int(d) for d in re.findall(r'\d', found[1])] == \
                list(range(1, highest + 1)), (name, key, found[0])
    assert 'order which can be any positive integer' in \
        ' '.join(UniPCMultistepScheduler.__doc__.split())


# ------------------------------------------------------- 2. a 0-d integer step count
STEP_COUNTS = [torch.tensor(4), torch.tensor(4, dtype=torch.int32), np.array(4),
               np.int64(4)]


def _gaussian_sample(sampler, num_steps, **options):
    diffusion = GaussianDiffusion(learn_sigma=False)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    x = diffusion.sample(lambda x, t: 0.1 * x, noise, {}, sampler, num_steps,
                         generators=[torch.Generator().manual_seed(1)], **options)
    return x, diffusion.last_nfe


@pytest.mark.parametrize('sampler, options', [
    ('ddpm', {}), ('ddim', {}), ('ddim', dict(spacing='even')), (DPM, {}),
    ('DDPMScheduler', {})])
@pytest.mark.parametrize('num_steps', STEP_COUNTS, ids=repr)
def test_gaussian_samplers_take_a_0d_integer_step_count_as_the_int(sampler, options,
                                                                   num_steps):
    x, nfe = _gaussian_sample(sampler, num_steps, **options)
    ref, ref_nfe = _gaussian_sample(sampler, 4, **options)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    assert nfe == ref_nfe == 4


def _transport_sample(sampler, num_steps):
    transport = Transport()
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    x = transport.sample(lambda x, t: -x, noise, {}, sampler, num_steps,
                         generators=[torch.Generator().manual_seed(1)])
    return x, transport.last_nfe


@pytest.mark.parametrize('sampler', ['ode_euler', 'ode_heun', 'sde_euler', 'sde_heun', FLOW])
@pytest.mark.parametrize('num_steps', STEP_COUNTS, ids=repr)
def test_transport_samplers_take_a_0d_integer_step_count_as_the_int(sampler, num_steps):
    x, nfe = _transport_sample(sampler, num_steps)
    ref, ref_nfe = _transport_sample(sampler, 4)
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    assert nfe == ref_nfe


@pytest.mark.parametrize('num_steps', STEP_COUNTS, ids=repr)
def test_the_likelihood_takes_a_0d_integer_step_count_as_the_int(num_steps):
    x = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(0))

    def logp(steps):
        generators = [torch.Generator().manual_seed(i) for i in range(2)]
        return Transport().log_likelihood(lambda x, t: -x, x, sampler='ode_euler',
                                          num_steps=steps, generators=generators)['logp']
    torch.testing.assert_close(logp(num_steps), logp(4), rtol=0, atol=0)


@pytest.mark.parametrize('num_steps', STEP_COUNTS, ids=repr)
def test_stable_cascade_takes_a_0d_integer_step_count_as_the_int(num_steps):
    # (Wuerstchen's sample handed the tensor on to set_timesteps; Stage B kept it)
    from mmsora.diffusion import WuerstchenDiffusion
    from mmsora.models.vaes.stable_cascade_decoder import StableCascadeDecoder
    diffusion = WuerstchenDiffusion()
    assert diffusion.check_sample_options('DDPMWuerstchenScheduler', num_steps) == 4
    assert type(diffusion.check_sample_options('DDPMWuerstchenScheduler', num_steps)) is int
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    x, ref = (diffusion.sample(lambda x, r: 0.1 * x, noise, {}, num_steps=steps,
                               generators=[torch.Generator().manual_seed(1)])
              for steps in (num_steps, 4))
    torch.testing.assert_close(x, ref, rtol=0, atol=0)
    decoder = StableCascadeDecoder(config=dict(), num_steps=num_steps)
    assert type(decoder.num_steps) is int and decoder.num_steps == 4


@pytest.mark.parametrize('num_steps', STEP_COUNTS, ids=repr)
def test_the_tools_check_takes_a_0d_integer_step_count(num_steps):
    check_sample_settings(GaussianDiffusion(), dict(sampler='ddpm', num_steps=num_steps))
    check_sample_settings(Transport(), dict(sampler=FLOW, num_steps=num_steps))


@pytest.mark.parametrize('objective, sampler, num_steps, message', [
    (GaussianDiffusion, 'ddpm', torch.tensor(4.0), 'a whole number in [1, 1000]'),
    (GaussianDiffusion, 'ddpm', torch.tensor(True), 'a whole number in [1, 1000]'),
    (GaussianDiffusion, 'ddpm', torch.tensor([4]), 'a whole number in [1, 1000]'),
    (GaussianDiffusion, 'ddpm', torch.tensor(0), 'in [1, 1000]'),
    (Transport, 'sde_euler', torch.tensor(1), '>= 2'),
    (Transport, FLOW, np.array(4.5), 'a whole number >= 1'),
])
def test_other_tensors_and_counts_out_of_range_are_still_refused(objective, sampler,
                                                                 num_steps, message):
    with pytest.raises(ValueError) as info:
        objective().sample(never_called, torch.zeros(1, 4, 2, 2), {}, sampler, num_steps)
    assert str(info.value).startswith(f'num_steps must be {message}')
    assert str(info.value).endswith(f', got {num_steps!r}')


# -------------------------------------------------------- 3. a word outside its list
def test_why_a_word_outside_the_list_was_no_help():
    """diffusers' DDPMScheduler takes variance_type='x' and steps with 'fixed_small'."""
    unknown, small = (_diffusers_loop(DDPMScheduler(variance_type=kind), 5)
                      for kind in ('x', 'fixed_small'))
    torch.testing.assert_close(unknown, small, rtol=0, atol=0)
    large = _diffusers_loop(DDPMScheduler(variance_type='fixed_large'), 5)
    assert not torch.equal(unknown, large)  # (the setting does act)
    # (DPM-Solver++ with its last sigma sigma_min: DEIS's name is taken as its own)
    deis = DPMSolverMultistepScheduler(algorithm_type='deis', final_sigmas_type='sigma_min')
    assert deis.config.algorithm_type == 'dpmsolver++'


DDPM_VARIANCES = ("'fixed_small', 'fixed_small_log', 'fixed_large', 'fixed_large_log', "
                  "'learned', 'learned_range'")


@pytest.mark.parametrize('sampler, key, value, choices, default, hint', [
    ('DDPMScheduler', 'variance_type', 'x', DDPM_VARIANCES, 'fixed_small', ''),
    ('DDPMScheduler', 'variance_type', 'Fixed_Large', DDPM_VARIANCES, 'fixed_small',
     "; did you mean 'fixed_large'?"),
    ('DDPMScheduler', 'variance_type', None, DDPM_VARIANCES, 'fixed_small', ''),
    ('DDPMScheduler', 'variance_type', 3, DDPM_VARIANCES, 'fixed_small', ''),
    (DPM, 'algorithm_type', 'deis',
     "'dpmsolver', 'dpmsolver++', 'sde-dpmsolver', 'sde-dpmsolver++'", 'dpmsolver++', ''),
    ('DDIMScheduler', 'timestep_spacing', 'trailng', "'leading', 'trailing', 'linspace'",
     'leading', "; did you mean 'trailing'?"),
])
def test_a_word_outside_a_settings_list_is_refused_naming_the_list(sampler, key, value,
                                                                    choices, default, hint):
    refused_alike(GaussianDiffusion, sampler, {key: value},
             f'{key}={value!r} is not one of {choices} (a setting of {sampler}; its default: '
             f'{default!r}): give one of them{hint}')


def test_the_listed_words_pass_and_sample():
    diffusion = GaussianDiffusion(learn_sigma=False)
    for kind in ('fixed_small', 'fixed_large', 'fixed_small_log', 'fixed_large_log'):
        diffusion.check_sample_options('DDPMScheduler', 10, variance_type=kind)
    diffusion.check_sample_options(DPM, 10, variance_type=None)  # (its default: unset)
    diffusion.check_sample_options(DPM, 10, algorithm_type='sde-dpmsolver++')
    x, _ = _gaussian_sample('DDPMScheduler', 4, variance_type='fixed_large')
    assert torch.isfinite(x).all()
