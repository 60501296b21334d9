"""A Stable Cascade decoder folder (Stage B + Stage A) with its config.json but no
weights, or a variant of them alone: check_folder (tools/train.py's check before the
run) passed it, and the first decode (after the whole sampling) failed in diffusers'
words ('Error no file named diffusion_pytorch_model.bin found in directory'). Now one
line naming the folder, the files looked for and the keys to set, by the one rule of
weight files (mmsora.utils.diffusers_weights); a variant alone (fp16) loads.

Also the smallest latent side each Stable Cascade UNet takes (``smallest_latent_side``
of Stage C and of the decoder), against what their convolutions accept.
"""
import json
import os
import types

import pytest
import torch
from mmengine.config import Config

from mmsora.registry import MODELS
from mmsora.utils.cli import UserError
from mmsora.utils.tiny_checkpoints import (TINY_STAGE_A, TINY_STAGE_B,
                                           make_tiny_stable_cascade_decoder)

WEIGHTS = 'diffusion_pytorch_model.safetensors'
SAID = ('diffusion_pytorch_model.safetensors or .bin, sharded with its .index.json, or a '
        'variant such as diffusion_pytorch_model.fp16.safetensors')


def wrapper_of(folder, **kwargs):
    return MODELS.build(dict(type='StableCascadeDecoder', pretrained_path=str(folder),
                             latent_dim_scale=2.0, num_steps=2, **kwargs))


def one_line(info):
    text = str(info.value)
    assert '\n' not in text
    return text


def train_check(wrapper):
    """tools/train.py's check of the VAE folder before the run."""
    from mmsora.engine.run_config_checks import check_vae_folder
    check_vae_folder(types.SimpleNamespace(vae=wrapper))


@pytest.mark.parametrize('sub', ['decoder_lite', 'vqgan'])
def test_a_decoder_folder_without_weights_is_refused_before_the_run(tmp_path, sub):
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    wrapper_of(folder).check_folder()  # with its weights: passes
    os.remove(tmp_path / 'sc' / sub / WEIGHTS)
    (tmp_path / 'sc' / sub / 'README.md').write_text('weights come later')
    wrapper = wrapper_of(folder)
    keys = (f'model.vae.pretrained_path={folder}' if sub == 'vqgan' else
            f'model.vae.pretrained_path={folder} model.vae.decoder_subfolder=decoder_lite')
    said = (f"{'Stage A' if sub == 'vqgan' else 'Stage B'} folder '{folder}/{sub}' has "
            f'config.json but no weights file ({SAID}): copy the weights in beside it, or '
            f'give the stabilityai/stable-cascade folder that holds them ({keys})')
    with pytest.raises(ValueError) as info:
        wrapper.check_folder()
    assert one_line(info) == said
    with pytest.raises(UserError) as info:  # (its keys named: not put under one more)
        train_check(wrapper)
    assert one_line(info) == said
    # at the load (tools/infer.py, the first decode): the same line, nothing loaded
    with pytest.raises(FileNotFoundError) as info:
        wrapper.decode(torch.randn(1, 16, 1, 2, 2))
    assert one_line(info) == said
    assert wrapper.__dict__['_pipe'] is None


def test_a_decoder_folder_of_fp16_weights_alone_loads(tmp_path):
    """The hub's folders may hold only diffusion_pytorch_model.fp16.safetensors: weights
    to the check, which diffusers reads only when asked for the variant."""
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    z = torch.randn(1, 16, 2, 2)
    expected = wrapper_of(folder).decode(z)
    for sub in ('decoder_lite', 'vqgan'):
        os.rename(tmp_path / 'sc' / sub / WEIGHTS,
                  tmp_path / 'sc' / sub / 'diffusion_pytorch_model.fp16.safetensors')
    wrapper = wrapper_of(folder)
    wrapper.check_folder()
    torch.testing.assert_close(wrapper.decode(z), expected)


def test_a_damaged_shard_index_names_the_key(tmp_path):
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    stage_b = tmp_path / 'sc' / 'decoder_lite'
    os.remove(stage_b / WEIGHTS)
    (stage_b / 'diffusion_pytorch_model.safetensors.index.json').write_text(json.dumps(
        dict(weight_map={'w': 'diffusion_pytorch_model-00001-of-00002.safetensors'})))
    with pytest.raises(ValueError) as info:
        wrapper_of(folder).check_folder()
    assert one_line(info) == (
        f'{stage_b}/diffusion_pytorch_model.safetensors.index.json lists 1 shard(s) not in '
        'its folder (e.g. diffusion_pytorch_model-00001-of-00002.safetensors): copy them '
        'in beside it (or all the weights again) (model.vae.pretrained_path='
        f'{folder} model.vae.decoder_subfolder=decoder_lite)')


def test_smallest_latent_sides_are_what_the_unets_take(repo_root):
    """Stage C's tiny UNet (2 levels) halves its grid once unless its switch_level says
    not to: 2 (or 1) is its smallest side, one less fails in its convolution; the tiny
    Stage B (patch 2, halving once: 4) reads latents twice as large at
    latent_dim_scale 2: 2 in Stage C latent units."""
    cfg = Config.fromfile(
        f'{repo_root}/configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')
    for switch, least in (((False,), 1), ((True,), 2), (None, 2)):
        denoiser = cfg.model.denoiser.to_dict()
        denoiser['unet'] = dict(denoiser['unet'], switch_level=switch)
        torch.manual_seed(0)
        denoiser = MODELS.build(denoiser).eval()
        assert denoiser.smallest_latent_side == least, switch
        c = denoiser.in_channels
        with torch.no_grad():
            x = torch.randn(1, c, 1, least, least)
            assert denoiser(x, torch.rand(1)).shape == x.shape
            if least > 1:
                with pytest.raises(RuntimeError):
                    denoiser(torch.randn(1, c, 1, least - 1, least - 1), torch.rand(1))
    for scale, least in ((2.0, 2), (1.0, 4), (3.0, 2), (4.0, 1)):
        decoder = MODELS.build(dict(type='StableCascadeDecoder', latent_dim_scale=scale,
                                    num_steps=2, config=dict(decoder=TINY_STAGE_B,
                                                             vqgan=TINY_STAGE_A)))
        assert decoder.smallest_latent_side == least, scale
    decoder = MODELS.build(dict(type='StableCascadeDecoder', latent_dim_scale=2.0,
                                num_steps=2, config=dict(decoder=TINY_STAGE_B,
                                                         vqgan=TINY_STAGE_A)))
    channels = TINY_STAGE_B['effnet_in_channels']
    with torch.no_grad():
        decoder.decode(torch.randn(1, channels, 2, 2))
        with pytest.raises(RuntimeError):
            decoder.decode(torch.randn(1, channels, 1, 1))
