"""A Stable Cascade prior folder whose weights file is missing, cut short or only a
variant (walk-through): diffusers' tracebacks ('Error no file named
diffusion_pytorch_model.bin found in directory' of the parent folder, 'Unable to load
weights from checkpoint file') became one line naming the folder and the config key."""
import os

import pytest
import torch
from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet

from mmsora.models.denoisers.stable_cascade_video import _BLOCKS
from mmsora.registry import MODELS

TINY_STAGE_C = dict(
    in_channels=4, out_channels=4, timestep_ratio_embedding_dim=16, patch_size=1,
    conditioning_dim=32, block_out_channels=(32, 32), num_attention_heads=(2, 2),
    down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1),
    down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
    block_types_per_layer=_BLOCKS, clip_text_in_channels=24, clip_text_pooled_in_channels=20,
    clip_image_in_channels=8, clip_seq=2, kernel_size=3, dropout=(0.0, 0.0), self_attn=True,
    timestep_conditioning_type=('sca', 'crp'), switch_level=(False,))
WEIGHTS = 'diffusion_pytorch_model.safetensors'


def prior_model(root):
    return MODELS.build(dict(type='StableCascadeVideo', unet=TINY_STAGE_C,
                             pretrained_path=str(root), pretrained_subfolder='prior_lite'))


def released(root, **save):
    torch.manual_seed(3)
    unet = StableCascadeUNet(**TINY_STAGE_C)
    with torch.no_grad():  # off the init (diffusers zero-inits some weights)
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(root / 'prior_lite', **save)
    return unet


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
