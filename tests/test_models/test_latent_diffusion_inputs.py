"""LatentDiffusion's inputs from Python: badly shaped labels, noise, a lone caption
string and an int seed are refused (or taken) in one line, not in a traceback deep in
the denoiser."""
import re

import pytest
import numpy as np
import torch

from mmsora.registry import MODELS

SHAPE = (4, 8, 8)


def tiny_model():
    torch.manual_seed(0)
    denoiser = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                    depth=2, num_heads=2, num_classes=3, learn_sigma=True)
    model = MODELS.build(dict(type='LatentDiffusion', denoiser=denoiser,
                              latent_shape=SHAPE, num_classes=3))
    for p in model.denoiser.parameters():  # (DiT's zero-initialised output layers)
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return model


def sample(model, labels=(0, 1), **kwargs):
    return model.sample(list(labels), sampler='ddim', num_steps=2, decode=False, **kwargs)


# ----------------------------- (1) labels' shape ----------------------------- #
def test_labels_of_shape_n_1_are_named_with_the_fix():
    """A fast-DiT label file holds shape (1,): a dataset returning np.load(label) gave
    (N, 1) labels, which failed in DiT with 'not enough values to unpack'."""
    with pytest.raises(ValueError, match=r"^the batch's labels must be \(N,\) = \(2,\), one "
                                         r'class id per latent, got shape \(2, 1\); \(N, 1\)\? '
                                         r'squeeze them'):
        tiny_model().loss(torch.randn(2, *SHAPE), torch.tensor([[0], [1]]))


@pytest.mark.parametrize('labels', [[0, 1, 2], [0], 1])
def test_labels_of_another_count_than_the_latents_are_named(labels):
    """Three labels for two latents were a size mismatch inside DiT's blocks."""
    shape = re.escape(str(tuple(torch.as_tensor(labels).shape)))
    with pytest.raises(ValueError, match=rf"^the batch's labels must be \(N,\) = \(2,\), "
                                         rf'one class id per latent, got shape {shape}$'):
        tiny_model().loss(torch.randn(2, *SHAPE), labels)


def test_labels_of_shape_n_still_train():
    out = tiny_model().loss(torch.randn(2, *SHAPE), torch.tensor([0, 2]))
    assert out['loss'].isfinite()


# ------------------------------ (2) sample's noise ----------------------------- #
def test_noise_of_another_batch_than_the_labels_is_named():
    with pytest.raises(ValueError, match=r'^noise must be \(N, \*model.latent_shape\) = '
                                         r'\(2, 4, 8, 8\) for the 2 samples of the labels '
                                         r'given, got shape \(3, 4, 8, 8\)$'):
        sample(tiny_model(), noise=torch.randn(3, *SHAPE))


def test_noise_of_another_size_than_the_model_is_named():
    """It was DiT's AssertionError 'input size (16, 16) does not match the model'."""
    with pytest.raises(ValueError, match=r'^noise must be .* = \(2, 4, 8, 8\) .*got shape '
                                         r'\(2, 4, 16, 16\)$'):
        sample(tiny_model(), noise=torch.randn(2, 4, 16, 16))


def test_float64_noise_samples_as_its_float32_values():
    """float64 noise (numpy's default) failed with 'Input type (double) and bias type
    (float)'; it is cast as ``loss`` casts float64 latents."""
    model = tiny_model()
    noise = torch.randn(2, *SHAPE, dtype=torch.float64)
    ours = sample(model, noise=noise, seeds=[0, 1])
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, sample(model, noise=noise.float(), seeds=[0, 1]),
                               rtol=0, atol=0)


# ----------------------------- (3) a lone caption ------------------------------ #
def text_model(t5_dir):
    torch.manual_seed(0)
    return MODELS.build(dict(
        type='LatentDiffusion',
        denoiser=dict(type='VideoDiT', input_size=8, patch_size=2, in_channels=4,
                      hidden_size=32, depth=2, num_heads=2, learn_sigma=False,
                      num_frames=2, block_type='stdit', condition='text', text_dim=32,
                      max_text_len=4, class_dropout_prob=0.1),
        diffusion=dict(type='GaussianDiffusion', learn_sigma=False),
        text_encoder=dict(type='HFTextEncoder', pretrained_path=t5_dir, max_length=6),
        latent_shape=(4, 2, 8, 8)))


def test_a_lone_caption_string_for_a_batch_is_named(t5_dir):
    """The string was iterated, one caption per letter: 'text_embeds must be (N=2, L,
    D), got shape (10, 16, 32)'."""
    pytest.importorskip('transformers')
    model = text_model(t5_dir)
    with pytest.raises(ValueError, match=r'^caption is one string for a batch of 2 latents: '
                                         r'give a list of 2 captions, one per latent$'):
        model.loss(torch.randn(2, 4, 2, 8, 8), caption='a red bike')
    with pytest.raises(ValueError, match=r'^got 3 captions for 2 latents'):
        model.loss(torch.randn(2, 4, 2, 8, 8), caption=['a', 'red', 'bike'])


def test_a_lone_caption_string_for_one_latent_is_its_caption(t5_dir):
    pytest.importorskip('transformers')
    model = text_model(t5_dir)
    x = torch.randn(1, 4, 2, 8, 8)
    torch.manual_seed(1)
    lone = model.loss(x, caption='a red disk')['loss']
    torch.manual_seed(1)
    torch.testing.assert_close(lone, model.loss(x, caption=['a red disk'])['loss'])


# ------------------------------ (4) an int seed -------------------------------- #
def test_an_int_seed_is_seeds_s_s_plus_1():
    """It was 'object of type int has no len()'; sample_images takes an int s as the
    seeds s, s + 1, ..."""
    model = tiny_model()
    torch.testing.assert_close(sample(model, seeds=5), sample(model, seeds=[5, 6]),
                               rtol=0, atol=0)


@pytest.mark.parametrize('seeds', [1.5, 'ab'])
def test_seeds_neither_int_nor_one_per_sample_are_named(seeds):
    with pytest.raises(ValueError, match=r'^seeds must be one whole number per sample '
                                         r'\(or an int s: seeds s, s \+ 1, ...\), got '):
        sample(tiny_model(), seeds=seeds)


def test_a_wrong_count_of_seeds_is_named():
    with pytest.raises(ValueError, match=r'^got 3 seeds for 2 samples: give one seed per'):
        sample(tiny_model(), seeds=[0, 1, 2])


def test_seeds_that_are_not_whole_numbers_are_refused():
    """seed_list took [1.5, 2.7] as seeds 1 and 2 (review ag)."""
    from mmsora.utils.sample_rng import seed_list
    with pytest.raises(ValueError, match=r'^seeds must be one whole number per sample'):
        seed_list([1.5, 2.7], 2)
    assert seed_list([3.0, np.int64(4)], 2) == [3, 4]
    assert seed_list(torch.tensor([5, 6]), 2) == [5, 6]


# ------------------------ (5) sample's cfg_scale and prompts ------------------------ #
@pytest.mark.parametrize('cfg_scale', ['4', True, float('nan'), float('inf'), None,
                                       torch.tensor([4.0, 2.0]), torch.tensor(True),
                                       torch.tensor(float('nan')), torch.tensor(2 + 1j),
                                       np.array([4.0]), np.bool_(True)])
def test_a_cfg_scale_that_is_not_a_finite_number_is_one_line(cfg_scale):
    """A str from a notebook was a raw torch error inside the denoiser; True sampled
    without guidance and NaN drew NaN samples, without a word. The line is
    sample_images' (one check for both). A tensor of several elements (one scale per
    sample?), a bool or complex one, is no scale either."""
    with pytest.raises(ValueError, match=r'^cfg_scale must be a finite number \(the guidance '
                                         rf'scale; 1: none\), got {re.escape(repr(cfg_scale))}$'):
        sample(tiny_model(), cfg_scale=cfg_scale)


def test_a_cfg_scale_of_any_real_number_type_still_guides():
    model = tiny_model()
    want = sample(model, seeds=[0, 1], cfg_scale=1.5)
    # (a 0-d tensor or array is a number to its user: torch.tensor(1.5) was refused)
    for scale in (np.float32(1.5), np.float64(1.5), torch.tensor(1.5), np.array(1.5),
                  torch.tensor(1.5, dtype=torch.float64, requires_grad=True)):
        torch.testing.assert_close(sample(model, seeds=[0, 1], cfg_scale=scale), want,
                                   rtol=0, atol=0)
    assert not torch.equal(sample(model, seeds=[0, 1], cfg_scale=1), want)
    torch.testing.assert_close(sample(model, seeds=[0, 1], cfg_scale=torch.tensor(1)),
                               sample(model, seeds=[0, 1], cfg_scale=1), rtol=0, atol=0)


def test_check_cfg_scale_gives_a_tensor_scale_as_a_float():
    """What LatentDiffusion.sample guides with (and names in its messages): 2.0, not
    tensor(2.)."""
    from mmsora.models.latent_diffusion import check_cfg_scale
    for scale in (torch.tensor(2.0), torch.tensor(2), np.array(2.0), np.float32(2.0),
                  np.int64(2)):
        found = check_cfg_scale(scale)
        assert type(found) is float and found == 2.0
    assert check_cfg_scale(4) == 4 and type(check_cfg_scale(4)) is int  # as given


@pytest.mark.parametrize('prompts, message', [
    (3, r"^prompts must be a list of captions \(str\), one per sample \(prompts=\['a red "
        r"bike'\] for one sample\), got 3$"),
    (b'a red bike', r'^prompts must be a list of captions \(str\), one per sample .*got '
                   r"b'a red bike'$"),
    ([], r'^prompts is empty: give one caption per sample$'),
    (['a red bike', 3], r'^prompts\[1\] is 3, not a caption: prompts must be a list of str, '
                        r'one per sample$'),
    ([['a red bike']], r"^prompts\[0\] is \['a red bike'\], not a caption"),
    # (a set's order of str changes from one process to the next: caption i with it)
    ({'a red bike', 'a blue car'}, r"^prompts is a set, whose order changes from one run to "
                                   r"the next .*give a list, e\.g\. sorted\(prompts\)$"),
])
def test_prompts_that_are_not_captions_are_one_line(t5_dir, prompts, message):
    """prompts=3 was 'int object is not iterable'; [3] failed in the tokenizer."""
    pytest.importorskip('transformers')
    model = text_model(t5_dir)
    with pytest.raises(ValueError, match=message):
        model.sample(prompts=prompts, seeds=0, num_steps=2, decode=False)


def test_one_caption_string_is_one_sample_and_sequences_of_str_are_taken(t5_dir):
    pytest.importorskip('transformers')
    model = text_model(t5_dir)

    def draw(prompts):
        return model.sample(prompts=prompts, seeds=0, sampler='ddim', num_steps=2,
                            decode=False)

    want = draw(['a red bike'])
    assert want.shape == (1, 4, 2, 8, 8)
    for prompts in ('a red bike', ('a red bike',), np.array(['a red bike'])):
        torch.testing.assert_close(draw(prompts), want, rtol=0, atol=0)
