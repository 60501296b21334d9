"""A folder given where a checkpoint file is read as it is (model.pretrained_denoiser:
load_checkpoint_file, no resolve_checkpoint before it) says what the folder is and what
to give. It said 'checkpoint file not found: FOLDER' of a folder that exists: a work
dir, a DeepSpeed checkpoint folder, a DiTPipeline folder whose transformer/ lost its
files, any folder."""
import json
import os

import pytest
import torch

from mmsora.models import LatentDiffusion
from mmsora.registry import MODELS
from mmsora.utils.checkpoint import load_checkpoint_file

MODEL = dict(denoiser=dict(type='DiT', input_size=8, patch_size=2, in_channels=3,
                           hidden_size=32, depth=2, num_heads=2, num_classes=4),
             diffusion=dict(type='GaussianDiffusion', learn_sigma=True),
             latent_shape=(3, 8, 8), num_classes=4)
GIVE_FILE = ('a folder that is neither a work dir with a checkpoint (last_checkpoint, '
             'iter_N.pth), a DeepSpeed checkpoint folder nor a diffusers DiT folder: give a '
             'checkpoint file')
CONVERT = 'convert it with tools/zero_to_state_dict.py and give the file it writes'


def said(folder) -> str:
    """What model.pretrained_denoiser=folder says (and load_checkpoint_file, as the
    model reads it), checked to be the same."""
    with pytest.raises(FileNotFoundError) as info:
        LatentDiffusion(**MODEL, pretrained_denoiser=str(folder)).init_weights()
    with pytest.raises(FileNotFoundError) as again:
        load_checkpoint_file(str(folder))
    assert str(again.value) == str(info.value)
    return str(info.value)


def test_folders_that_hold_no_checkpoint_say_what_they_are(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert said(empty) == f'{empty}: {GIVE_FILE}'
    pipe = tmp_path / 'pipe'  # a DiTPipeline whose transformer/ lost its files
    (pipe / 'transformer').mkdir(parents=True)
    (pipe / 'model_index.json').write_text(json.dumps(
        {'_class_name': 'DiTPipeline', 'transformer': ['diffusers', 'DiTTransformer2DModel']}))
    assert said(pipe).startswith(f'{pipe} holds a diffusers DiTPipeline (its '
                                 'model_index.json) whose transformer/ has no config.json '
                                 'and no weights (diffusion_pytorch_model.safetensors or .bin')
    assert said(pipe).endswith(': put back what save_pretrained wrote there (config.json '
                               'beside the weights)')
    vae = tmp_path / 'vae'
    vae.mkdir()
    (vae / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL'}))
    assert said(vae).startswith(f'{vae} holds a diffusers AutoencoderKL (its config.json), '
                                "not a denoiser's weights: give a checkpoint file")


def test_work_dirs_and_deepspeed_folders_name_what_to_give(tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    dit = MODELS.build(MODEL['denoiser'])
    state = {f'denoiser.{k}': v + 0.01 for k, v in dit.state_dict().items()}
    torch.save({'state_dict': state, 'meta': {}}, work / 'iter_2.pth')
    assert said(work) == (f'{work}: a work dir, not a checkpoint file: give its checkpoint '
                          f'file ({work / "iter_2.pth"})')
    model = LatentDiffusion(**MODEL, pretrained_denoiser=str(work / 'iter_2.pth'))
    model.init_weights()  # (the file it names loads)
    assert torch.equal(model.denoiser.pos_embed, state['denoiser.pos_embed'])
    (work / 'last_checkpoint').write_text(str(work / 'iter_4.pth'))  # a file gone
    assert said(work) == (f'{work / "last_checkpoint"} names {work / "iter_4.pth"}, which '
                          f'does not exist; an earlier checkpoint {work / "iter_2.pth"} is '
                          'readable: give the checkpoint file')
    zero = work / 'iter_4.pth'  # a DeepSpeed run's checkpoint: a folder
    zero.mkdir()
    (zero / 'mp_rank_00_model_states.pt').write_bytes(b'')
    (zero / 'bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt').write_bytes(b'')
    assert said(zero) == f'{zero}: a DeepSpeed checkpoint folder: {CONVERT}'
    assert said(work) == (f'{work}: a work dir, its newest checkpoint {zero} a DeepSpeed '
                          f'checkpoint folder: {CONVERT}')
    os.remove(work / 'last_checkpoint')  # (the highest iter_N.pth: the same)
    assert said(work) == (f'{work}: a work dir, its newest checkpoint {zero} a DeepSpeed '
                          f'checkpoint folder: {CONVERT}')


@pytest.mark.parametrize('weights', ['diffusion_pytorch_model.safetensors',
                                     'diffusion_pytorch_model.bf16.safetensors'])
def test_weights_without_their_config_are_named(tmp_path, weights):
    """A folder of diffusers weights that lost its config.json: the file is named, a
    variant of any name too (the names diffusers_weights.folder_weights reads)."""
    folder = tmp_path / 'dit'
    folder.mkdir()
    (folder / weights).write_bytes(b'')
    assert said(folder) == (f'{folder}: diffusers weights ({weights}) without the config.json '
                            'they were saved with: put it back beside them (save_pretrained '
                            'writes both)')
