"""The weight files a VAE folder is judged by, before its load (tools/infer.py) and at
it: one list of diffusers' names (plain, sharded, a variant, a sharded variant), so a
folder the load reads is never refused, nor one it cannot read let through."""
import shutil

import pytest
from diffusers import AutoencoderKL

from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.models.vaes.autoencoder_kl import check_vae_weights, folder_weights
from tests.tiny_models import TINY_VAE


@pytest.mark.parametrize('save, found', [
    (dict(), {}),
    (dict(max_shard_size='20KB'), {}),
    (dict(variant='fp16'), dict(variant='fp16')),
    # diffusion_pytorch_model.fp16-00001-of-00010.safetensors and its index
    # .safetensors.index.fp16.json: the load was not told the variant ('no file named')
    (dict(variant='fp16', max_shard_size='20KB'), dict(variant='fp16')),
], ids=['plain', 'sharded', 'variant', 'sharded_variant'])
def test_every_way_diffusers_saves_the_weights_is_found_and_loads(tmp_path, save, found):
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path, **save)
    assert folder_weights(str(tmp_path)) == found
    check_vae_weights(str(tmp_path))
    assert AutoencoderKLWrapper(pretrained_path=str(tmp_path)).latent_channels == 4


@pytest.mark.parametrize('other', [None, 'diffusion_pytorch_model.ckpt', 'model.safetensors'])
def test_a_folder_without_weights_diffusers_loads_is_one_line(tmp_path, tiny_vae_dir, other):
    folder = tmp_path / 'vae'
    folder.mkdir()
    shutil.copy(f'{tiny_vae_dir}/config.json', folder)
    if other:
        (folder / other).write_bytes(b'')
    assert folder_weights(str(folder)) is None
    message = (f"^VAE folder {str(folder)!r} holds AutoencoderKL's config.json but no "
               r'weights \(diffusion_pytorch_model.safetensors or .bin, sharded with its '
               r'.index.json, or a variant such as diffusion_pytorch_model.fp16.safetensors'
               r'\): copy them in beside it, or give the folder that holds them$')
    with pytest.raises(FileNotFoundError, match=message):
        check_vae_weights(str(folder))
    with pytest.raises(FileNotFoundError, match=message):  # the load says the same
        AutoencoderKLWrapper(pretrained_path=str(folder)).vae
