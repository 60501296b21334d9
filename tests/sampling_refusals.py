"""A sampler setting refused alike by sampling and by the tools' check before the
weights load (tests of the diffusion objectives' sampler settings)."""
import pytest
import torch

from mmsora.diffusion.scheduler_sampling import check_sample_settings


def never_called(x, t, **kwargs):
    raise AssertionError('the model was called before the options were judged')


def refused_alike(objective, sampler, options, message):
    """The same one line ``message`` from ``sample`` (before any model call) and from
    ``check_sample_settings`` (the tools' check before the weights load)."""
    with pytest.raises(ValueError) as info:
        objective().sample(never_called, torch.zeros(1, 4, 2, 2), {}, sampler, 10, **options)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        check_sample_settings(objective(), dict(sampler=sampler, num_steps=10, **options))
    assert str(info.value) == message
