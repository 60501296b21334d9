"""A denoiser's sizes that do not fit together, said as tools/train.py gives them (one
``error:`` line, :func:`explain_error`): the config keys at fault and values that fit.
Before, 'input size 8x8 is not a multiple of the patch size 3' named neither."""
import pytest

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.registry import MODELS
from mmsora.utils.error_messages import explain_error

VIDEO = dict(type='VideoDiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
             depth=2, num_heads=2, num_classes=2, learn_sigma=False, num_frames=2)


def error_line(**denoiser):
    """The one line tools/train.py prints for building the model with ``denoiser``."""
    with pytest.raises(ValueError) as info:
        MODELS.build(dict(type='LatentDiffusion', denoiser=dict(VIDEO, **denoiser),
                          latent_shape=(4, 2, 8, 8), num_classes=2))
    return explain_error(info.value)


def test_a_patch_size_that_does_not_divide_the_input_size():
    assert error_line(patch_size=3) == (
        'input_size 8x8 is not a multiple of patch_size 3: set patch_size to one that '
        'divides it (1, 2 or 4), or input_size to multiples of 3 (9x9)')


def test_a_non_square_input_size_gets_the_patch_sizes_of_both_sides():
    from mmsora.models.layers.embedders import PatchEmbed
    with pytest.raises(ValueError, match=r'^input_size 60x106 is not a multiple of '
                                         r'patch_size 4: set patch_size to one that '
                                         r'divides it \(1 or 2\), or input_size to '
                                         r'multiples of 4 \(60x104\)$'):
        PatchEmbed((60, 106), 4)


def test_a_head_count_that_does_not_divide_hidden_size():
    assert error_line(hidden_size=100, num_heads=6) == (
        'hidden_size 100 must be divisible by num_heads 6: set num_heads to 5 or 10, or '
        'hidden_size to 96 or 102')
    # more heads than channels: no head count above, no hidden size of 0
    assert error_line(hidden_size=4, num_heads=6).endswith(
        'set num_heads to 4, or hidden_size to 6')


def test_an_odd_latte_depth_says_the_even_depths_and_stdit():
    assert error_line(depth=3) == (
        'latte interleaves spatial and temporal blocks: depth must be even, got 3; set '
        "depth to 2 or 4, or block_type='stdit' (spatial and temporal attention in every "
        'block), which takes any depth')
    assert 'set depth to 2, or' in error_line(depth=1)
    # the way out it names builds
    model = MODELS.build(dict(VIDEO, depth=3, block_type='stdit'))
    assert len(model.blocks) == 3
