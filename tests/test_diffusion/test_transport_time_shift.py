"""Transport's time_shift: SD3's shift of the noise level, as Open-Sora 1.2 trains and
samples with it (use_timestep_transform), in training and in every fixed-step sampler.

Open-Sora 1.2's rule, on its scale (t in [0, 1000], 1000 = noise), as its
opensora/schedulers/rf code gives it: t / 1000 -> r t / (1 + (r - 1) t), in training
after drawing t, and in sampling on the times [(1 - i / N) * 1000 for i in range(N)]
(Euler steps between them, the last to 0)."""
import math

import pytest
import torch

from mmsora.diffusion import Transport, open_sora_time_shift
from mmsora.diffusion.transport_samplers import shift_times
from tests.test_diffusion.test_transport import MU, S, analytic_model


def open_sora_transform(t, ratio, num_timesteps=1000):
    """Open-Sora 1.2's timestep_transform with its ratio given."""
    t = t / num_timesteps
    return ratio * t / (1 + (ratio - 1) * t) * num_timesteps


def recorder(transport, seen):
    exact = analytic_model(transport)

    def model(x, t):
        seen.append(float(t[0]))
        # the exact field wants SiT's time: undo the 'dit' convention
        return exact(x, 1 - t / 1000 if transport.timestep_convention == 'dit' else t)
    return model


@pytest.mark.parametrize('shift', [3.0, 0.5])
def test_the_sampling_grid_is_open_soras(shift):
    transport = Transport(time_shift=shift, timestep_convention='dit')
    z = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seen = []
    transport.sample(recorder(transport, seen), z, {}, 'ode_euler', 30)
    ours = open_sora_transform(torch.tensor([(1 - i / 30) * 1000 for i in range(30)],
                                            dtype=torch.float64), shift)
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float64), ours)
    # Euler on the exact flow still ends at the data as steps grow: the grid alone moved
    x = transport.sample(recorder(transport, []), z, {}, 'ode_euler', 300)
    assert (x - (MU + S * z)).abs().max() < 0.02
    unshifted = []
    Transport(timestep_convention='dit').sample(recorder(transport, unshifted), z, {},
                                                 'ode_euler', 30)
    assert unshifted[1] == pytest.approx(1000 * 29 / 30)
    assert (seen[1] > unshifted[1]) == (shift > 1)  # more of the steps near the noise


def test_the_other_fixed_step_samplers_take_the_shift():
    """Heun, the SDE samplers and diffusers' flow-matching scheduler (its own ``shift``
    option, which the objective's fills unless given)."""
    shifted, plain = Transport(time_shift=3.0), Transport()
    z = torch.randn(6, 2, dtype=torch.float64)
    for sampler in ('ode_heun', 'sde_euler', 'sde_heun'):
        seen, before = [], []
        kwargs = dict(generators=[torch.Generator().manual_seed(i) for i in range(6)])
        shifted.sample(recorder(shifted, seen), z, {}, sampler, 10, **kwargs)
        plain.sample(recorder(plain, before), z, {}, sampler, 10, **kwargs)
        assert seen[0] == before[0] == 0 and seen[-1] == before[-1], sampler  # the ends
        # the place in the interval [0, t1] shifted (the SDEs' ends short of 1 by
        # their last step)
        t1 = before[-1]
        assert seen[1] == pytest.approx(t1 * shift_times(before[1] / t1, 3.0)), sampler
    seen, given = [], []
    shifted.sample(recorder(shifted, seen), z, {}, 'FlowMatchEulerDiscreteScheduler', 10)
    plain.sample(recorder(plain, given), z, {}, 'FlowMatchEulerDiscreteScheduler', 10,
                 shift=3.0)
    assert seen == given
    again = []  # a shift given to the sampler wins over the objective's
    shifted.sample(recorder(shifted, again), z, {}, 'FlowMatchEulerDiscreteScheduler', 10,
                   shift=1.0)
    plain_grid = []
    plain.sample(recorder(plain, plain_grid), z, {}, 'FlowMatchEulerDiscreteScheduler', 10)
    assert again == plain_grid != seen


def test_training_times_are_shifted_as_open_soras():
    for time_dist in ('uniform', 'logit_normal'):
        plain = Transport(time_dist=time_dist)
        shifted = Transport(time_dist=time_dist, time_shift=4.0)
        torch.manual_seed(0)
        t = plain.sample_time(10000, 'cpu').double()
        torch.manual_seed(0)
        ours = shifted.sample_time(10000, 'cpu').double()
        # on Open-Sora's scale: noise level * 1000, transformed
        expected = 1 - open_sora_transform((1 - t) * 1000, 4.0) / 1000
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
        assert (1 - ours).mean() > (1 - t).mean() + 0.15  # noisier on average
    # the loss sees those times: the model is called at them
    seen = []
    transport = Transport(time_shift=4.0)
    torch.manual_seed(3)
    transport.loss(lambda x, t: seen.append(t) or x, torch.randn(5, 2))
    torch.manual_seed(3)
    torch.randn(5, 2), torch.randn(5, 2)  # the data drawn above, then the noise
    torch.testing.assert_close(seen[0], transport.sample_time(5, 'cpu'))


def test_open_soras_shift_for_a_size_and_length():
    # sqrt(pixels / 512^2) * sqrt(frames // 17 * 5)
    assert open_sora_time_shift(480, 848, 102) == pytest.approx(
        math.sqrt(480 * 848 / 512 ** 2) * math.sqrt(30))
    assert open_sora_time_shift(512, 512, 1) == 1.0  # a picture at its base size
    assert open_sora_time_shift(256, 256, 51, scale=2.0) == pytest.approx(
        0.5 * math.sqrt(15) * 2)
    with pytest.raises(ValueError, match=r'num_frames=16: Open-Sora 1.2 counts frames in '
                                         r'17s .*give a time_shift of your own'):
        open_sora_time_shift(256, 256, 16)
    with pytest.raises(ValueError, match='height must be a positive whole number'):
        open_sora_time_shift(0, 256, 1)


def test_a_bad_shift_fails_at_build_and_shows_in_repr():
    for bad in (0, -1.0, float('inf')):
        with pytest.raises(ValueError, match='time_shift must be > 0'):
            Transport(time_shift=bad)
    assert 'time_shift=3,' in repr(Transport(time_shift=3.0))


def test_a_config_sets_it(repo_root):
    """From a config, as the rectified-flow video config's header says to."""
    from mmengine.config import Config

    from mmsora.registry import DIFFUSION
    cfg = Config.fromfile(f'{repo_root}/configs/sit/video_dit_xl2_rflow_8xb5_1m_ucf101.py')
    cfg.model.diffusion.time_shift = 2.0
    transport = DIFFUSION.build(cfg.model.diffusion)
    assert transport.time_shift == 2.0 and transport.time_dist == 'logit_normal'
