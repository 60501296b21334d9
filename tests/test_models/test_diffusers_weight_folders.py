"""One judge of which weights a diffusers model folder holds (mmsora.utils.diffusers_weights),
for the VAE, the Stable Cascade prior and the diffusers DiT reader. Shards count only with
their index and every shard it lists: a VAE folder that lost its index passed the check
before sampling, then failed in diffusers ('no file named diffusion_pytorch_model.bin') at
the first decode. A variant of any name is weights to all three: a DiT folder of
diffusion_pytorch_model.bf16.safetensors alone was 'no weights' to the DiT reader and a
bf16 variant to the VAE."""
import json
import os

import pytest
import torch
from diffusers import AutoencoderKL

from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.models.vaes.autoencoder_kl import check_vae_weights, folder_weights
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.diffusers_dit import missing_dit_weights
from tests.test_models.test_dit import build_reference, rekey_reference, tiny_cfg
from tests.tiny_models import TINY_VAE

INDEX = 'diffusion_pytorch_model.safetensors.index.json'
FP16_INDEX = 'diffusion_pytorch_model.safetensors.index.fp16.json'


def no_weights(folder) -> str:
    """check_vae_weights' line for a VAE folder holding no weights diffusers loads."""
    return (f"VAE folder {str(folder)!r} holds AutoencoderKL's config.json but no weights "
            '(diffusion_pytorch_model.safetensors or .bin, sharded with its .index.json, or '
            'a variant such as diffusion_pytorch_model.fp16.safetensors): copy them in '
            'beside it, or give the folder that holds them')


def shards(folder, stem='diffusion_pytorch_model-'):
    found = sorted(p for p in folder.iterdir() if p.name.startswith(stem))
    assert len(found) > 1
    return found


@pytest.mark.parametrize('variant, index', [(None, INDEX), ('fp16', FP16_INDEX)])
def test_vae_shards_count_only_with_their_index_and_every_shard(tmp_path, variant, index):
    folder = tmp_path / 'vae'
    AutoencoderKL(**TINY_VAE).save_pretrained(folder, max_shard_size='10KB', variant=variant)
    stem = 'diffusion_pytorch_model' + (f'.{variant}-' if variant else '-')
    parts = shards(folder, stem)
    # the whole folder passes and loads
    assert folder_weights(str(folder)) == ({} if variant is None else dict(variant=variant))
    check_vae_weights(str(folder))
    AutoencoderKLWrapper(pretrained_path=str(folder)).check_folder()
    assert AutoencoderKLWrapper(pretrained_path=str(folder)).latent_channels == 4
    # its index lost (a half-finished copy): refused before sampling, in one line
    text = (folder / index).read_text()
    os.remove(folder / index)
    assert folder_weights(str(folder)) is None
    with pytest.raises(FileNotFoundError) as info:
        check_vae_weights(str(folder))  # (tools/infer.py's check before the sampling)
    assert str(info.value) == no_weights(folder)
    with pytest.raises(ValueError) as info:
        AutoencoderKLWrapper(pretrained_path=str(folder)).check_folder()  # (tools/train.py)
    assert str(info.value) == no_weights(folder)
    # an index alone, or a shard it lists lost: refused, naming the shard
    (folder / index).write_text(text)
    kept = parts[1].read_bytes()
    os.remove(parts[1])
    said = (f'{folder / index} lists 1 shard(s) not in its folder (e.g. {parts[1].name}): '
            'copy them in beside it (or all the weights again)')
    with pytest.raises(FileNotFoundError) as info:
        check_vae_weights(str(folder))
    assert str(info.value) == said
    with pytest.raises(ValueError) as info:
        AutoencoderKLWrapper(pretrained_path=str(folder)).check_folder()
    assert str(info.value) == said
    # a damaged index: said so
    parts[1].write_bytes(kept)
    (folder / index).write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=r'the shard index is damaged \(cut short'):
        check_vae_weights(str(folder))


def test_a_dit_folder_of_any_variant_loads_as_the_vae_folder_is_judged(tmp_path):
    # diffusion_pytorch_model.bf16.safetensors alone (the hub's prior folders hold bf16
    # variants): the DiT reader said 'no weights', the VAE's check said a bf16 variant
    ref = build_reference(tiny_cfg(), seed=5)
    expected = rekey_reference(ref)
    for name, save in (('bf16', dict(variant='bf16')),
                       ('bf16_sharded', dict(variant='bf16', max_shard_size='20KB'))):
        folder = tmp_path / name
        ref.save_pretrained(folder, **save)
        assert not (folder / 'diffusion_pytorch_model.safetensors').exists()
        assert folder_weights(str(folder)) == dict(variant='bf16')  # (the VAE's judge)
        assert missing_dit_weights(str(folder)) is None
        state = load_checkpoint_file(str(folder))
        assert sorted(state) == sorted(expected)
        for key, value in expected.items():
            torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0, msg=key)


def test_a_dit_folder_of_shards_without_their_index_or_a_shard_is_refused(tmp_path):
    folder = tmp_path / 'transformer'
    build_reference(tiny_cfg(), seed=5).save_pretrained(folder, max_shard_size='20KB')
    parts = shards(folder)
    os.remove(parts[0])
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint_file(str(folder))
    assert str(info.value) == (f'{folder / INDEX} lists 1 shard(s) not in its folder (e.g. '
                               f'{parts[0].name}): copy them in beside it (or all the '
                               'weights again)')
    os.remove(folder / INDEX)
    with pytest.raises(FileNotFoundError, match=r"holds a diffusers DiTTransformer2DModel's "
                                                r'config\.json but no weights \(diffusion_'):
        load_checkpoint_file(str(folder))


def test_a_stage_c_folder_of_shards_without_their_index_is_one_line(tmp_path):
    # diffusers failed with 'no file named diffusion_pytorch_model.bin' (an OSError
    # the prior's load let through): the lone shards were taken for weights
    from tests.test_models.test_stable_cascade_prior_weight_files import (one_line,
                                                                          prior_model,
                                                                          released)
    unet = released(tmp_path, max_shard_size='20KB')
    folder = tmp_path / 'prior_lite'
    shards(folder)
    index = json.loads((folder / INDEX).read_text())
    assert index['weight_map']
    model = prior_model(tmp_path)
    model.init_weights()  # whole: loads
    for key, value in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value), key
    os.remove(folder / INDEX)
    with pytest.raises(FileNotFoundError) as info:
        prior_model(tmp_path).init_weights()
    assert one_line(info).startswith(f"Stage C folder '{folder}' has config.json but no "
                                     'weights file (diffusion_pytorch_model.safetensors or ')
