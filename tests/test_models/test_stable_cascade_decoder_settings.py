"""StableCascadeDecoder's Stage B steps and guidance, judged when it is built by
sampling's own rules (check_num_steps, check_cfg_scale) in one line naming Stage B:
``num_steps='3'`` was a TypeError, 2.5 and True passed; a str guidance_scale failed
in the pipeline after all of Stage C's steps, NaN and True turned guidance off
without a word."""
import os.path as osp

import numpy as np
import pytest

from mmsora.models import StableCascadeDecoder
from mmsora.utils.cli import UserError
from mmsora.utils.tiny_checkpoints import TINY_STAGE_A, TINY_STAGE_B

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')
TINY = dict(decoder=TINY_STAGE_B, vqgan=TINY_STAGE_A)
STAGE_B = "Stable Cascade's Stage B (model.vae): "


@pytest.mark.parametrize('num_steps', ['3', 2.5, True, 0, None])
def test_stage_b_steps_that_are_no_whole_number_from_1_are_refused(num_steps):
    with pytest.raises(ValueError) as info:
        StableCascadeDecoder(config=TINY, num_steps=num_steps)
    whole = '' if num_steps == 0 else 'a whole number '  # (of these, 0 alone is one)
    assert str(info.value) == f'{STAGE_B}num_steps must be {whole}>= 1, got {num_steps!r}'


@pytest.mark.parametrize('scale', ['4', None, True, float('nan'), float('inf')])
def test_stage_b_guidance_that_is_no_finite_number_is_refused(scale):
    with pytest.raises(ValueError) as info:
        StableCascadeDecoder(config=TINY, guidance_scale=scale)
    assert str(info.value) == (f'{STAGE_B}guidance_scale must be a finite number (<= 1: '
                               f'no guidance), got {scale!r}')


def test_whole_steps_and_any_finite_guidance_pass():
    """The pipeline's guidance: <= 1 is none (its default 0), more guides."""
    for num_steps, scale in ((1, 0.0), (np.int64(3), 0), (10, 4), (2, -1.0),
                             (4, np.float32(2.5))):
        decoder = StableCascadeDecoder(config=TINY, num_steps=num_steps,
                                       guidance_scale=scale)
        assert (decoder.num_steps, decoder.guidance_scale) == (num_steps, scale)


def test_train_says_it_before_the_run():
    """tools/train.py builds the model on the meta device first: the one line."""
    from mmengine.config import Config

    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.engine.run_config_checks import build_model_on_meta
    cfg = Config.fromfile(CONFIG)
    apply_cfg_options(cfg, ['model.vae.num_steps=2.5'], schedule_note=False)
    with pytest.raises(UserError) as info:
        build_model_on_meta(cfg)
    assert str(info.value).endswith(
        f'{STAGE_B}num_steps must be a whole number >= 1, got 2.5')
