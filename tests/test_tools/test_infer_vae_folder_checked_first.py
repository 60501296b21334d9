"""tools/infer.py reads the VAE folder's config.json before it samples (walk-through ak):
the VAE loads only to decode, so a folder without a VAE, or with its config.json but no
weights, was named, and a VAE of other latent channels failed in a 57-line convolution
traceback, after every sampling step."""
import json
import os.path as osp
import shutil

import pytest
import torch

from mmsora.apis import init_model
from mmsora.models.latent_diffusion import LatentDiffusion
from mmsora.utils.cli import run_cli
from tests.cli_helpers import load_tool
from tests.tiny_models import DEMO

# the demo shrunk to 4-channel 8x8 latents decoded by the tiny VAE (factor 2)
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.denoiser.in_channels=4', 'model.latent_shape=[4,8,8]']


@pytest.fixture
def run(repo_root, tmp_path, tiny_vae_dir):
    """``(config, weights)``: the demo with an AutoencoderKLWrapper VAE and a DiT file
    of its denoiser's (random) weights."""
    config = tmp_path / 'latent.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
                      "model = dict(vae=dict(_delete_=True, type='AutoencoderKLWrapper', "
                      f"pretrained_path={tiny_vae_dir!r}))\n")
    model, _ = init_model(str(config), checkpoint=False, cfg_options=TINY)
    weights = tmp_path / 'dit.pt'
    torch.save(model.denoiser.state_dict(), weights)
    return str(config), str(weights)


def infer(run, tmp_path, vae):
    """tools/infer.py on ``run`` with ``vae`` as model.vae.pretrained_path: its exit
    status."""
    config, weights = run
    argv = [config, '--checkpoint', weights, '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'samples.png'), '--cfg-options', *TINY,
            f'model.vae.pretrained_path={vae}']
    return run_cli(lambda: load_tool('infer').main(argv))


def test_the_right_vae_folder_samples(run, tmp_path, tiny_vae_dir):
    assert infer(run, tmp_path, tiny_vae_dir) == 0
    assert osp.isfile(tmp_path / 'samples.png')


def test_a_vae_folder_of_fp16_weights_alone_samples(run, tmp_path, tiny_vae_dir):
    """diffusion_pytorch_model.fp16.safetensors (as the hub's folders may hold) is
    weights: the check before sampling knows the names the load reads."""
    from diffusers import AutoencoderKL
    folder = tmp_path / 'fp16'
    AutoencoderKL.from_pretrained(tiny_vae_dir).save_pretrained(folder, variant='fp16')
    assert not osp.exists(folder / 'diffusion_pytorch_model.safetensors')
    assert infer(run, tmp_path, folder) == 0
    assert osp.isfile(tmp_path / 'samples.png')


@pytest.mark.parametrize('kind', ['empty', 'eight_channels', 'no_weights'])
def test_a_wrong_vae_folder_is_refused_before_sampling(run, tmp_path, tiny_vae_dir, capsys,
                                                       monkeypatch, kind):
    def sample(*args, **kwargs):
        raise AssertionError('sampled before the VAE folder was checked')
    monkeypatch.setattr(LatentDiffusion, 'sample', sample)
    folder = tmp_path / kind
    if kind == 'empty':  # a folder that exists but holds no VAE
        folder.mkdir()
        wanted = (f"error: VAE folder {str(folder)!r} has no config.json (not a diffusers "
                  'AutoencoderKL folder)')
    elif kind == 'no_weights':  # its config.json alone (the weights not copied)
        folder.mkdir()
        shutil.copy(osp.join(tiny_vae_dir, 'config.json'), folder)
        (folder / 'diffusion_pytorch_model.ckpt').write_bytes(b'')  # (no name diffusers
        # loads: what the load named, after the sampling)
        wanted = (f"error: VAE folder {str(folder)!r} holds AutoencoderKL's config.json but "
                  'no weights (diffusion_pytorch_model.safetensors or .bin, sharded with its '
                  '.index.json, or a variant such as diffusion_pytorch_model.fp16.safetensors)'
                  ': copy them in beside it, or give the folder that holds them')
    else:  # a VAE of 8-channel latents for the 4-channel model
        shutil.copytree(tiny_vae_dir, folder)
        config = json.loads((folder / 'config.json').read_text())
        (folder / 'config.json').write_text(json.dumps(dict(config, latent_channels=8)))
        wanted = (f"error: VAE folder {str(folder)!r} makes 8-channel latents (its "
                  "config.json) but the model's have 4 (model.latent_shape[0]): give the VAE "
                  'the model was trained with (--cfg-options model.vae.pretrained_path=DIR)')
    assert infer(run, tmp_path, folder) == 2
    assert capsys.readouterr().err.splitlines() == [wanted]
