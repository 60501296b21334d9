"""Stable Cascade fixes of a walk-through: Stage B gets the prompts' pooled embeddings
when LatentDiffusion samples, a Stage B that does not fit the prior is refused in one
line before sampling, and tools/extract_features.py names a Stable Cascade folder.

The model is the tiny config's (a tiny Stage C, tiny CLIP, tiny Stage B + A in local
folders), 2 Stage C steps and 2 Stage B steps.
"""
import functools
import json
import os.path as osp
from unittest import mock

import pytest
import torch
from mmengine.config import Config

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.registry import MODELS
from mmsora.utils.cli import UserError
from mmsora.utils.tiny_checkpoints import make_tiny_stable_cascade_decoder
from tests.tiny_models import TINY_VAE

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')
PROMPTS = ['a red disk', 'a blue ring']


def spy_decode(vae):
    """Record ``vae.decode``'s keyword arguments (keeping its signature)."""
    calls = []

    @functools.wraps(vae.decode)
    def decode(*args, **kwargs):
        calls.append(kwargs)
        return decode.__wrapped__(*args, **kwargs)
    vae.decode = decode
    return calls


def build(clip_path, stage_b, **vae):
    """The tiny config's model (16-channel Stage C latents, 16-wide pooled CLIP)."""
    cfg = Config.fromfile(CONFIG).model
    cfg.vae.update(pretrained_path=str(stage_b), **vae)
    cfg.text_encoder.pretrained_path = clip_path
    cfg.latent_shape = (16, 2, 4, 4)
    torch.manual_seed(0)
    return MODELS.build(cfg).eval()


def test_stage_b_gets_the_prompts_pooled_embeddings(clip_path, tmp_path):
    model = build(clip_path, make_tiny_stable_cascade_decoder(str(tmp_path / 'sc')))
    options = dict(prompts=PROMPTS, seeds=[0, 1], num_steps=2, cfg_scale=2.0)
    z = model.sample(decode=False, **options)
    out = model.sample(**options)
    pooled = model.encode_text(PROMPTS)[2]            # CLIP's projected text_embeds
    torch.testing.assert_close(out, model.vae.decode(z, pooled=pooled))
    assert not torch.allclose(out, model.vae.decode(z), atol=1e-4)  # zeros: not the same
    # pre-computed embeddings too; without guidance in Stage B no negative is made
    embeds, mask, _ = model.encode_text(PROMPTS)
    calls = spy_decode(model.vae)
    model.sample(text_embeds=embeds, text_mask=mask, pooled_text_embeds=pooled,
                 seeds=[0, 1], num_steps=2)
    assert torch.equal(calls[-1]['pooled'], pooled)
    assert 'negative_pooled' not in calls[-1]


def test_stage_b_guidance_uses_the_empty_caption_as_negative(clip_path, tmp_path):
    model = build(clip_path, make_tiny_stable_cascade_decoder(str(tmp_path / 'sc')),
                  guidance_scale=2.0)
    calls = spy_decode(model.vae)
    model.sample(prompts=PROMPTS, seeds=[0, 1], num_steps=2)
    empty = model.encode_text([''])[2]
    assert torch.equal(calls[-1]['negative_pooled'], empty)


def test_stage_b_progress_bar_follows_sample_progress(clip_path, tmp_path, capfd):
    """progress=False (mass sampling, the evaluation hook) still drew Stage B's bar
    over micro-batches: decode() was called with its own default (True)."""
    model = build(clip_path, make_tiny_stable_cascade_decoder(str(tmp_path / 'sc')),
                  micro_batch_size=1)
    calls = spy_decode(model.vae)
    for progress in (False, True):
        capfd.readouterr()
        model.sample(prompts=PROMPTS, seeds=[0, 1], num_steps=2, progress=progress)
        assert calls[-1]['progress'] is progress
        assert ('Stage B+A decode' in capfd.readouterr().err) is progress


def test_class_models_decode_as_before():
    """A class-conditional model (tiny DiT, tiny SD VAE) gives its VAE no pooled text
    embeddings, even a VAE whose ``decode`` reads them: sampling decodes with none,
    and a condition that holds 'pooled' gives none either (a class model has no text:
    without the ``text_conditioned`` check it would be passed on)."""
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='LatentDiffusion', latent_shape=(4, 8, 8), num_classes=3,
        denoiser=dict(type='DiT', input_size=8, patch_size=2, in_channels=4,
                      hidden_size=32, depth=2, num_heads=2, num_classes=3),
        vae=dict(type='AutoencoderKLWrapper', config=TINY_VAE, scale_factor=0.5))).eval()
    calls, decode = [], model.vae.decode

    def decode_reading_pooled(z, pooled=None, negative_pooled=None):
        calls.append(dict(pooled=pooled, negative_pooled=negative_pooled))
        return decode(z)
    model.vae.decode = decode_reading_pooled
    model.sample([0, 1], seeds=[0, 1], sampler='ddim', num_steps=2)
    assert calls == [dict(pooled=None, negative_pooled=None)]
    cond = dict(y=torch.tensor([0, 1]), pooled=torch.ones(2, 16))
    assert model._decode_text_kwargs(cond) == {}


def test_stage_b_for_other_latents_is_refused_at_build(clip_path, tmp_path):
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc8'), stage_c_channels=8)
    with pytest.raises(ValueError) as info:
        build(clip_path, folder)
    message = str(info.value)
    assert '\n' not in message and osp.join(folder, 'decoder_lite') in message
    assert '8-channel Stage C latents' in message and 'have 16 channels' in message
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'p32'), pooled_dim=32)
    with pytest.raises(ValueError, match=r'takes 32-wide pooled .* are 16 wide'):
        build(clip_path, folder)


def test_stage_b_for_other_latents_is_refused_before_sampling(clip_path, tmp_path):
    folder = tmp_path / 'later'
    model = build(clip_path, folder)                 # no folder yet: nothing to check
    make_tiny_stable_cascade_decoder(str(folder), stage_c_channels=8)
    with mock.patch.object(model.diffusion, 'sample') as steps, \
            pytest.raises(ValueError, match=r"'.*later/decoder_lite' reads 8-channel .* 16 "):
        model.sample(prompts=PROMPTS, seeds=[0, 1], num_steps=2)
    steps.assert_not_called()
    model.sample(prompts=PROMPTS, seeds=[0, 1], num_steps=2, decode=False)  # latents: fine
    with pytest.raises(ValueError, match='reads 8-channel Stage C latents'):
        model.vae.decode(torch.zeros(1, 16, 4, 4))


@pytest.mark.parametrize('layout', ['subfolders', 'model_index'])
def test_extract_features_names_a_stable_cascade_folder(tmp_path, layout):
    folder = tmp_path / 'stable-cascade'
    if layout == 'subfolders':
        (folder / 'vqgan').mkdir(parents=True)
        (folder / 'decoder_lite').mkdir()
    else:
        folder.mkdir()
        (folder / 'model_index.json').write_text(
            json.dumps(dict(_class_name='StableCascadeDecoderPipeline')))
    (tmp_path / 'images' / 'a').mkdir(parents=True)
    from tools import extract_features as extract
    with pytest.raises(UserError) as info:
        extract.main(['--data-path', str(tmp_path / 'images'), '--out', str(tmp_path / 'o'),
                      '--vae', str(folder), '--device', 'cpu'])
    message = str(info.value)
    assert '\n' not in message and message.startswith(f'--vae {folder} is a Stable Cascade')
    assert 'cannot write Stage C latents' in message and 'encoder=' in message


def test_decoded_size_is_the_size_decoding_gives(tmp_path):
    from mmsora.models import StableCascadeDecoder
    vae = StableCascadeDecoder(make_tiny_stable_cascade_decoder(str(tmp_path / 'sc')),
                               latent_dim_scale=2.0, num_steps=1)
    assert vae.decoded_size(33, 32) == (40, 32)     # 33 px rounds up to 5 latents
    h, w = vae.latent_size(33, 32)
    assert vae.decode(torch.zeros(1, 16, h, w)).shape[-2:] == (40, 32)
