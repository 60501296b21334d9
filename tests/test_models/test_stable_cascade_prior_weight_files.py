"""A Stable Cascade prior folder whose weights file is missing, cut short or only a
variant (walk-through): diffusers' tracebacks ('Error no file named
diffusion_pytorch_model.bin found in directory' of the parent folder, 'Unable to load
weights from checkpoint file') became one line naming the folder and the config key."""
import os

import pytest
import torch

from mmsora.registry import MODELS
from tests.tiny_models import TINY_STAGE_C, released_stage_c

# the tiny Stage C with one layer a block
PRIOR = dict(TINY_STAGE_C, down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1))
WEIGHTS = 'diffusion_pytorch_model.safetensors'


def prior_model(root):
    return MODELS.build(dict(type='StableCascadeVideo', unet=PRIOR,
                             pretrained_path=str(root), pretrained_subfolder='prior_lite'))


def released(root, **save):
    return released_stage_c(root / 'prior_lite', PRIOR, seed=3, **save)


def one_line(info):
    text = str(info.value)
    assert '\n' not in text
    return text


def test_a_prior_folder_without_its_weights_file_is_one_line(tmp_path):
    released(tmp_path)
    os.remove(tmp_path / 'prior_lite' / WEIGHTS)
    (tmp_path / 'prior_lite' / 'README.md').write_text('weights come later')
    with pytest.raises(FileNotFoundError) as info:
        prior_model(tmp_path).init_weights()
    assert one_line(info) == (
        f"Stage C folder '{tmp_path}/prior_lite' has config.json but no weights file "
        '(diffusion_pytorch_model.safetensors or .bin, sharded with its .index.json, or a '
        'variant such as diffusion_pytorch_model.fp16.safetensors): copy the weights in '
        'beside it, or give the folder that holds them (model.denoiser.pretrained_path='
        f'{tmp_path} model.denoiser.pretrained_subfolder=prior_lite)')
    # a Hugging Face cache folder: read in its snapshot, the key as given
    cache = tmp_path / 'models--stabilityai--stable-cascade-prior'
    (cache / 'snapshots' / 'abc123').mkdir(parents=True)
    os.rename(tmp_path / 'prior_lite', cache / 'snapshots' / 'abc123' / 'prior_lite')
    (cache / 'refs').mkdir()
    (cache / 'refs' / 'main').write_text('abc123\n')
    with pytest.raises(FileNotFoundError) as info:
        prior_model(cache).init_weights()
    assert one_line(info).startswith(
        f"Stage C folder '{cache}/snapshots/abc123/prior_lite' has config.json but no ")
    assert one_line(info).endswith(f'(model.denoiser.pretrained_path={cache} '
                                   'model.denoiser.pretrained_subfolder=prior_lite)')


def test_a_cut_short_weights_file_is_said_to_be_damaged(tmp_path):
    released(tmp_path)
    weights = tmp_path / 'prior_lite' / WEIGHTS
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])  # an interrupted download
    with pytest.raises(ValueError) as info:
        prior_model(tmp_path).init_weights()
    assert one_line(info) == (
        f"Stage C weights file '{weights}' is damaged or cut short (as by an interrupted "
        f'download): copy it again (model.denoiser.pretrained_path={tmp_path} '
        'model.denoiser.pretrained_subfolder=prior_lite)')


def test_a_folder_holding_only_a_variant_of_the_weights_loads(tmp_path):
    """The hub's prior folders hold bf16 variants beside the plain files; a copy of the
    variant alone was 'no file named diffusion_pytorch_model.bin'."""
    unet = released(tmp_path, variant='bf16')
    assert sorted(os.listdir(tmp_path / 'prior_lite')) == [
        'config.json', 'diffusion_pytorch_model.bf16.safetensors']
    model = prior_model(tmp_path)
    model.init_weights()
    for key, value in unet.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value), key


def test_a_prior_path_that_does_not_exist_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        prior_model(tmp_path / 'nope').init_weights()
    assert one_line(info) == (
        f"model.denoiser.pretrained_path '{tmp_path / 'nope'}' does not exist (give a local "
        'stabilityai/stable-cascade-prior folder; nothing is downloaded)')
