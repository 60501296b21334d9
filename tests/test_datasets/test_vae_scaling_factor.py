"""A VAE folder's own scaling_factor (SDXL's 0.13025): extract_features.py --vae
scales by it, and a config that scales by another one says so before training."""
import json
import os.path as osp

import pytest

from mmsora.models.vaes.autoencoder_kl import AutoencoderKLWrapper, folder_scaling_factor
from tests.extract_tools import run_extract

pytestmark = pytest.mark.usefixtures('fresh_notes')


def test_extraction_scales_by_the_folders_own(sdxl_like_vae, tiny_vae_dir, image_folder,
                                              tmp_path):
    assert folder_scaling_factor(sdxl_like_vae) == pytest.approx(0.13025)
    assert folder_scaling_factor(tiny_vae_dir) == pytest.approx(0.18215)  # (SD's)
    run_extract(image_folder, str(tmp_path / 'store'), sdxl_like_vae)
    index = json.load(open(tmp_path / 'store' / 'index.json'))
    assert index['scale_factor'] == pytest.approx(0.13025)
    # --scale-factor still wins
    run_extract(image_folder, str(tmp_path / 'own'), sdxl_like_vae, '--scale-factor', '0.5')
    assert json.load(open(tmp_path / 'own' / 'index.json'))['scale_factor'] == 0.5


def test_a_config_scale_apart_from_the_folders_is_said(sdxl_like_vae, tiny_vae_dir, capsys):
    AutoencoderKLWrapper(pretrained_path=sdxl_like_vae, scale_factor=0.18215).check_folder()
    folder = osp.normpath(sdxl_like_vae)
    assert capsys.readouterr().err == (
        f'note: VAE folder {folder} says scaling_factor 0.13025, model.vae.scale_factor is '
        "0.18215: latents are scaled by 0.18215 (the folder's own: "
        'model.vae.scale_factor=0.13025)\n')
    AutoencoderKLWrapper(pretrained_path=sdxl_like_vae, scale_factor=0.13025).check_folder()
    AutoencoderKLWrapper(pretrained_path=tiny_vae_dir, scale_factor=0.18215).check_folder()
    assert capsys.readouterr().err == ''
