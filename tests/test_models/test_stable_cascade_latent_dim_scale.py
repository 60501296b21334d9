"""StableCascadeDecoder's latent_dim_scale, judged when it is built (review H4): 0 was a
ZeroDivisionError in smallest_latent_side (tools/infer.py's smallest-size check), a
negative one a negative latent size, both met only once the model was sampled."""
import math

import numpy as np
import pytest

from mmsora.models import StableCascadeDecoder
from mmsora.registry import MODELS
from mmsora.utils.tiny_checkpoints import TINY_STAGE_A, TINY_STAGE_B

TINY = dict(decoder=TINY_STAGE_B, vqgan=TINY_STAGE_A)


@pytest.mark.parametrize('scale', [0, 0.0, -2.0, -10.67, float('nan'), float('inf'), True,
                                   '10.67', None])
def test_a_latent_dim_scale_that_is_no_number_above_0_is_refused(scale):
    message = ("Stable Cascade's Stage B (model.vae): latent_dim_scale must be a finite "
               "number > 0 (Stage B's latent side over Stage C's; the released models: "
               f'10.67), got {scale!r}')
    with pytest.raises(ValueError) as info:
        StableCascadeDecoder(config=TINY, latent_dim_scale=scale)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:  # (as a config builds it)
        MODELS.build(dict(type='StableCascadeDecoder', config=TINY, latent_dim_scale=scale))
    assert str(info.value) == message


@pytest.mark.parametrize('scale', [2.0, 2, np.float32(2.0), 10.67])
def test_a_positive_latent_dim_scale_gives_the_smallest_side(scale):
    decoder = StableCascadeDecoder(config=TINY, latent_dim_scale=scale)
    unet = decoder.pipeline.decoder.config
    # the tiny Stage B: patch 2, one halving (2 levels, no switch level): 4
    smallest = unet.patch_size * 2 ** (len(unet.block_out_channels) - 1)
    assert decoder.smallest_latent_side == math.ceil(smallest / scale)
