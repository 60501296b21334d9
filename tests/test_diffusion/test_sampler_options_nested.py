"""A nested ``sampler_options`` dict (what the CHANGELOG once wrote:
``sampler_options=dict(spacing='even')``) is refused with the fix: a sampler's options
sit flat in sample_cfg, beside ``sampler``. It was hinted 'did you mean sampler?'
(walk-through ai), which is not the fix."""
import pytest

from mmsora.diffusion.scheduler_sampling import check_sampler_options
from mmsora.utils.config_keys import check_sample_settings_of

DDIM = ('clip_denoised', 'eta', 'spacing')


@pytest.mark.parametrize('nested', [dict(spacing='even'), '{"spacing": "even"}'])
def test_nested_sampler_options_are_shown_flat(nested):
    """A dict, or its text as --cfg-options hands it over."""
    with pytest.raises(ValueError) as info:
        check_sampler_options('ddim', dict(sampler_options=nested), DDIM)
    message = str(info.value)
    assert message.endswith("; sampler_options is not a key: a sampler's options go flat "
                            'in sample_cfg, beside sampler (sample_cfg.spacing=even; from '
                            "Python, keywords: spacing='even')")
    assert 'did you mean sampler' not in message


def test_nested_sampler_options_unreadable_and_beside_a_typo():
    with pytest.raises(ValueError, match=r'beside sampler \(sample_cfg\.NAME=VALUE; from Python, '
                                         r'keywords: NAME=VALUE\)$'):
        check_sampler_options('ddim', dict(sampler_options='dict(spacing=even)'), DDIM)
    with pytest.raises(ValueError) as info:
        check_sampler_options('ddim', dict(sampler_options=dict(spacing='even', eta=0.5),
                                           etta=1), DDIM)
    assert '; did you mean eta for etta?; sampler_options is not a key' in str(info.value)
    assert str(info.value).endswith(
        "(sample_cfg.spacing=even sample_cfg.eta=0.5; from Python, keywords: "
        "spacing='even', eta=0.5)")


def test_a_config_sample_cfg_with_sampler_options_gets_the_hint():
    """The check tools/infer.py and train.py's config check make of a sample_cfg."""
    model = dict(type='LatentDiffusion', diffusion=dict(type='GaussianDiffusion'))
    settings = dict(sampler='ddim', num_steps=4, sampler_options=dict(spacing='even'))
    with pytest.raises(ValueError, match=r"takes no option sampler_options .*options go "
                                         r'flat in sample_cfg, beside sampler '
                                         r'\(sample_cfg\.spacing=even; from Python, '
                                         r"keywords: spacing='even'\)$"):
        check_sample_settings_of(model, settings)
    check_sample_settings_of(model, dict(sampler='ddim', num_steps=4, spacing='even'))
