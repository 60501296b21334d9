"""A VAE folder with its config.json but no weights refused by the wrapper's
``check_folder``, the check tools/train.py makes before the run, in the line
tools/infer.py and the load say (``check_vae_weights``): the VAE loads only to decode,
so such a folder trained, then stopped the run at a sampling hook's first decode (or
at the evaluation)."""
import os.path as osp
import shutil

import pytest
from diffusers import AutoencoderKL, AutoencoderKLWan

from mmsora.models.vaes import AutoencoderKLWrapper, VideoVAEWrapper
from mmsora.utils.cli import run_cli
from tests.tiny_models import TINY_WAN_VAE
from tools.train import main as train_main

pytestmark = pytest.mark.usefixtures('fresh_notes', 'kept_environ')

# a config with a VAE folder (model.vae.pretrained_path), built on the meta device
IMAGENET = 'configs/dit/dit_s2_8xb32_400k_imagenet256.py'


def said(folder, wanted='AutoencoderKL') -> str:
    """check_vae_weights' line (tools/infer.py's, the load's)."""
    return (f"VAE folder {str(folder)!r} holds {wanted}'s config.json but no weights "
            '(diffusion_pytorch_model.safetensors or .bin, sharded with its .index.json, or '
            'a variant such as diffusion_pytorch_model.fp16.safetensors): copy them in '
            'beside it, or give the folder that holds them')


@pytest.fixture
def no_weights(tmp_path, tiny_vae_dir):
    """A VAE folder with the tiny VAE's config.json and a file diffusers does not load."""
    folder = tmp_path / 'vae'
    folder.mkdir()
    shutil.copy(osp.join(tiny_vae_dir, 'config.json'), folder)
    (folder / 'diffusion_pytorch_model.ckpt').write_bytes(b'')
    return folder


def test_a_folder_without_weights_is_refused_before_the_run(no_weights, tmp_path):
    with pytest.raises(ValueError) as info:
        AutoencoderKLWrapper(pretrained_path=str(no_weights)).check_folder()
    assert str(info.value) == said(no_weights)
    # a pipeline folder's vae/ (found by itself) is judged the same
    (tmp_path / 'pipeline').mkdir()
    shutil.copytree(no_weights, tmp_path / 'pipeline' / 'vae')
    with pytest.raises(ValueError) as info:
        AutoencoderKLWrapper(pretrained_path=str(tmp_path / 'pipeline')).check_folder()
    assert str(info.value) == said(tmp_path / 'pipeline' / 'vae')


def test_folders_with_weights_pass(tiny_vae_dir, tmp_path):
    AutoencoderKLWrapper(pretrained_path=tiny_vae_dir).check_folder()
    AutoencoderKL.from_pretrained(tiny_vae_dir).save_pretrained(tmp_path, variant='fp16')
    AutoencoderKLWrapper(pretrained_path=str(tmp_path)).check_folder()  # (fp16 alone)
    # a folder not there yet, or without a config.json, is the load's to name
    AutoencoderKLWrapper(pretrained_path=str(tmp_path / 'later')).check_folder()
    (tmp_path / 'empty').mkdir()
    AutoencoderKLWrapper(pretrained_path=str(tmp_path / 'empty')).check_folder()


def test_a_video_vae_folder_without_weights_is_refused(tmp_path):
    folder = tmp_path / 'wan'
    AutoencoderKLWan(**TINY_WAN_VAE).save_config(folder)  # (config.json alone)
    wrapper = VideoVAEWrapper('AutoencoderKLWan', pretrained_path=str(folder))
    with pytest.raises(ValueError) as info:
        wrapper.check_folder()
    assert str(info.value) == said(folder, 'AutoencoderKLWan')
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(folder)
    wrapper.check_folder()


def test_train_refuses_it_in_one_line_before_the_run(repo_root, no_weights, tmp_path,
                                                     capsys):
    work_dir = tmp_path / 'work'
    code = run_cli(lambda: train_main([
        osp.join(repo_root, IMAGENET), '--work-dir', str(work_dir), '--cfg-options',
        f'model.vae.pretrained_path={no_weights}']))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err == f'error: model.vae.pretrained_path: {said(no_weights)}\n'
    assert not osp.exists(work_dir)  # (no run started: its work dir not made)
