"""Stable Cascade fixes of a walk-through: a Stage C encoder given as a config is built
without touching torch's global generator (exact resume), a Hugging Face cache folder
works as the prior's folder, tools/train.py refuses a Stage B subfolder that is not
there, and prompts cut at the text encoder's max_length are said once.

Tiny random models only: a 4-channel convolution as the Stage C encoder, the tiny
Stage C of the toy config, the tiny Stage B + A and CLIP of
mmsora.utils.tiny_checkpoints.
"""
import os
import os.path as osp

import pytest
import torch
import torch.nn as nn

from mmsora.models.text_encoders import HFTextEncoder
from mmsora.registry import MODELS
from mmsora.utils.cli import UserError
from mmsora.utils.tiny_checkpoints import (TINY_STAGE_A, TINY_STAGE_B,
                                           make_tiny_stable_cascade_decoder)
from tests.tiny_models import released_stage_c

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')
# 15 tokens with the end one ('and' is <unk> to the tiny tokenizer)
LONG_PROMPT = 'a red disk rides on the road in snow and a blue ring jumps'


@MODELS.register_module(force=True)
class WalkthroughStageCEncoder(nn.Conv2d):
    """A random 'Stage C encoder' (32 px -> 4 x 4 x 4) with torch's default init."""

    def __init__(self):
        super().__init__(3, 4, kernel_size=8, stride=8)


def decoder(**kwargs):
    return MODELS.build(dict(type='StableCascadeDecoder', latent_dim_scale=2.0,
                             config=dict(decoder=TINY_STAGE_B, vqgan=TINY_STAGE_A), **kwargs))


# --------------------------------------------------------------------------- #
#             1. the encoder of a config leaves the global RNG alone          #
# --------------------------------------------------------------------------- #
def test_encoder_config_is_built_without_the_global_generator():
    """Built at the first encode from torch's generator, the encoder drew at iteration 1
    of a run but at the first one after --resume: the later losses differed."""
    images = torch.rand(2, 3, 2, 32, 32) * 2 - 1
    torch.manual_seed(0)
    wrapper = decoder(encoder=dict(type='WalkthroughStageCEncoder'))
    state = torch.get_rng_state()
    latents = wrapper.encode(images)
    assert latents.shape == (2, 4, 2, 4, 4)
    assert torch.equal(torch.get_rng_state(), state)
    # the same encoder wherever the first encode falls in the generator's stream (a
    # fresh run's iteration 1, a resumed run's first iteration)
    torch.manual_seed(123)
    torch.rand(5)
    other = decoder(encoder=dict(type='WalkthroughStageCEncoder'))
    torch.testing.assert_close(other.encode(images), latents)
    torch.testing.assert_close(wrapper.encode(images), latents)  # built once


# --------------------------------------------------------------------------- #
#                3. a Hugging Face cache folder as the prior's folder         #
# --------------------------------------------------------------------------- #
def test_prior_loads_from_a_hugging_face_cache_folder(tmp_path):
    from mmengine.config import Config
    unet = Config.fromfile(CONFIG).model.denoiser.unet.to_dict()  # the tiny Stage C
    cache = tmp_path / 'models--stabilityai--stable-cascade-prior'
    released = released_stage_c(cache / 'snapshots' / 'abc123' / 'prior_lite', unet, seed=5)
    os.makedirs(cache / 'snapshots' / 'old')  # another snapshot, not refs/main's
    (cache / 'refs').mkdir()
    (cache / 'refs' / 'main').write_text('abc123\n')
    model = MODELS.build(dict(type='StableCascadeVideo', unet=unet, pretrained_path=str(cache),
                              pretrained_subfolder='prior_lite'))
    model.init_weights()
    for key, value in released.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value), key


# --------------------------------------------------------------------------- #
#           4. tools/train.py checks Stage B's subfolder before the run        #
# --------------------------------------------------------------------------- #
def check_train(*options):
    """tools/train.py's check of the VAE folder on the tiny config with ``options``."""
    from mmengine.config import Config

    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.engine.run_config_checks import build_model_on_meta, check_vae_folder
    cfg = Config.fromfile(CONFIG)
    apply_cfg_options(cfg, list(options))
    check_vae_folder(build_model_on_meta(cfg))


def test_train_refuses_a_missing_stage_b_subfolder(tmp_path):
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    path = f'model.vae.pretrained_path={folder}'
    check_train(path)                                  # the right one passes
    check_train(f'model.vae.pretrained_path={tmp_path}/not-yet')  # left to load
    # (the fault is decoder_subfolder's: not put under pretrained_path)
    with pytest.raises(UserError, match=r"^'\S+/sc' has no "
                                        r"decoder-lite/config\.json \(model\.vae\.decoder_"
                                        r"subfolder='decoder-lite'\): set model\.vae\.decoder"
                                        r"_subfolder to 'decoder_lite', its Stage B$"):
        check_train(path, 'model.vae.decoder_subfolder=decoder-lite')
    with pytest.raises(UserError, match=r"has no decoder/config\.json .* to 'decoder_lite'"):
        check_train(path, 'model.vae.decoder_subfolder=decoder')
    wrapper = decoder().__class__(pretrained_path=folder)
    (tmp_path / 'sc' / 'vqgan' / 'config.json').unlink()
    with pytest.raises(ValueError, match=r"has no vqgan/config\.json \(Stage A\)"):
        wrapper.check_folder()
    with pytest.raises(ValueError, match=r"holds no Stage B \(decoder_lite/ or decoder/\)"):
        wrapper.__class__(pretrained_path=str(tmp_path)).check_folder()


def test_a_prior_folder_given_as_stage_b_is_named(tmp_path):
    cache = tmp_path / 'models--stabilityai--stable-cascade-prior'
    snapshot = cache / 'snapshots' / 'abc123'
    (snapshot / 'prior_lite').mkdir(parents=True)
    (snapshot / 'prior_lite' / 'config.json').write_text('{}')
    wrapper = decoder().__class__(pretrained_path=str(cache))
    with pytest.raises(ValueError, match=r'abc123\' holds a Stage C prior \(prior_lite/: '
                                         r'stable-cascade-prior\), not Stage B'):
        wrapper.check_folder()


# --------------------------------------------------------------------------- #
#                 5. prompts cut at max_length are said, once                  #
# --------------------------------------------------------------------------- #
def notes(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith('note:')]


def test_long_prompts_are_said_once_at_sampling(clip_path, capsys, monkeypatch):
    """The tiny config (max_length 8) sampled from a 15-token prompt: cut, not a word."""
    from mmengine.config import Config
    for key in ('RANK', 'SLURM_PROCID'):  # the note is rank 0's
        monkeypatch.delenv(key, raising=False)
    cfg = Config.fromfile(CONFIG).model
    cfg.text_encoder.pretrained_path = clip_path
    cfg.vae = None
    cfg.latent_shape = (16, 2, 4, 4)
    torch.manual_seed(0)
    model = MODELS.build(cfg).eval()
    model.sample(prompts=['a red disk'], seeds=[0], num_steps=1)
    assert notes(capsys) == []
    model.sample(prompts=['a red disk', LONG_PROMPT], seeds=[0, 1], num_steps=1)
    assert notes(capsys) == [
        "note: 1 of 2 prompts is longer than the text encoder's max_length, 8 tokens (the "
        f"longest 15, e.g. {LONG_PROMPT!r}), and cut there; set a larger "
        'model.text_encoder.max_length to keep them whole']
    model.sample(prompts=[LONG_PROMPT], seeds=[0], num_steps=1)  # said once, not per batch
    assert notes(capsys) == []


def test_encoding_captions_alone_says_nothing(clip_path, capsys, monkeypatch):
    """A training batch's captions (and tools/extract_features.py, which counts them
    itself) are encoded without the note, and without a second tokenizer pass."""
    for key in ('RANK', 'SLURM_PROCID'):
        monkeypatch.delenv(key, raising=False)
    encoder = HFTextEncoder(clip_path, kind='clip_with_projection', max_length=8)
    assert encoder.longer_than_max_length(['a red disk', LONG_PROMPT]) == [1]
    embeds, mask, _ = encoder.encode([LONG_PROMPT, 'a red disk'])
    assert embeds.shape == (2, 8, 32) and mask[0].all() and mask[1].sum() == 4
    assert notes(capsys) == []


def test_a_prior_path_that_is_a_file_or_missing_is_named(tmp_path):
    """Stability's own stage_c_lite_bf16.safetensors (its yaml's
    generator_checkpoint_path) and a path that does not exist were both told 'has no
    config.json: not a local diffusers StableCascadeUNet folder'."""
    from mmengine.config import Config
    unet = Config.fromfile(CONFIG).model.denoiser.unet.to_dict()
    model = MODELS.build(dict(type='StableCascadeVideo', unet=unet))
    single = tmp_path / 'stage_c_lite_bf16.safetensors'
    single.write_bytes(b'\0' * 16)
    with pytest.raises(FileNotFoundError, match=r"is a file \(Stability's own format, as "
                                                r'stage_c_lite_bf16.safetensors\): give the '
                                                'diffusers folder'):
        model.load_stage_c(str(single), 'prior_lite')
    with pytest.raises(FileNotFoundError, match=r"pretrained_path '.*nowhere' does not exist"):
        model.load_stage_c(str(tmp_path / 'nowhere'), 'prior_lite')


def test_stage_b_checks_read_a_hugging_face_cache_folder_at_its_snapshot(tmp_path):
    """check_fits(load=False) read Stage B's config.json beside the cache folder, found
    none and passed over its checks without a word (the load reads the snapshot)."""
    cache = tmp_path / 'models--stabilityai--stable-cascade'
    (cache / 'snapshots' / 'abc123' / 'decoder_lite').mkdir(parents=True)
    (cache / 'refs').mkdir()
    (cache / 'refs' / 'main').write_text('abc123\n')
    wrapper = MODELS.build(dict(type='StableCascadeDecoder', pretrained_path=str(cache),
                                decoder_subfolder='decoder_lite'))
    assert wrapper.stage_b_source == str(cache / 'snapshots' / 'abc123' / 'decoder_lite')
