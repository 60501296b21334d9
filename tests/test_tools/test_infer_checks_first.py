"""tools/infer.py judges what it will sample with before it samples: the guidance floor
(>= 1) of the scale sampling uses, whatever its source (it was the flag's alone: a
config's sample_cfg.cfg_scale=-3, or --cfg-options sample_cfg.cfg_scale=-3, sampled
with negative guidance), and a video VAE's latent channels against the model's (the
image VAE's alone were checked: a video VAE of other channels failed after every
sampling step)."""
import json
import os.path as osp

import pytest
import torch
from diffusers import AutoencoderKLWan

import mmsora.apis
from mmsora.apis import init_model
from mmsora.models.latent_diffusion import LatentDiffusion
from mmsora.models.vaes import VideoVAEWrapper
from mmsora.utils.cli import run_cli
from tests.cli_helpers import load_tool
from tests.tiny_models import DEMO, TINY_WAN_VAE, VIDEO_DEMO

pytestmark = pytest.mark.usefixtures('kept_environ')

# the demo shrunk: a 2-block DiT of width 32 on 3-channel 8x8 latents
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.latent_shape=[3,8,8]']
FLOOR = 'must be >= 1 (1 disables guidance), got '


@pytest.fixture
def run(repo_root, tmp_path):
    """``(config, weights)``: the demo with ``sample_cfg.cfg_scale=-3``, and a DiT
    file of its denoiser's (random) weights."""
    config = tmp_path / 'negative.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
                      'sample_cfg = dict(cfg_scale=-3.0)\n')
    model, _ = init_model(str(config), checkpoint=False, cfg_options=TINY)
    weights = tmp_path / 'dit.pt'
    torch.save(model.denoiser.state_dict(), weights)
    return str(config), str(weights)


def infer(config, weights, tmp_path, *args):
    """tools/infer.py on ``config``: its exit status."""
    argv = [config, '--checkpoint', weights, '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'samples.png'), *args, '--cfg-options', *TINY]
    return run_cli(lambda: load_tool('infer').main(argv))


def never(*args, **kwargs):
    raise AssertionError('the weights were loaded or sampled before the check')


@pytest.mark.parametrize('options, said', [
    ([], '-3.0'),  # the config's own
    (['sample_cfg.cfg_scale=0.5'], '0.5'),  # --cfg-options over it
])
def test_a_config_cfg_scale_below_1_is_refused_before_the_weights_load(
        run, tmp_path, capsys, monkeypatch, options, said):
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    monkeypatch.setattr(LatentDiffusion, 'sample', never)
    config, weights = run
    argv = [config, '--checkpoint', weights, '--out', str(tmp_path / 'samples.png'),
            '--cfg-options', *TINY, *options]
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f'error: sample_cfg.cfg_scale {FLOOR}{said}: give --cfg-scale, or set it >= 1 in '
        'the config']
    assert not osp.exists(tmp_path / 'samples.png')


def test_the_flag_below_1_is_named_as_the_flag(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    config, weights = run
    assert infer(config, weights, tmp_path, '--cfg-scale', '0.5') == 2
    assert capsys.readouterr().err.splitlines() == [f'error: --cfg-scale {FLOOR}0.5']


def test_the_flag_over_a_config_below_1_samples_with_the_flags(run, tmp_path,
                                                               monkeypatch):
    scales = []
    sample = LatentDiffusion.sample

    def recorded(self, *args, **kwargs):
        scales.append(kwargs.get('cfg_scale'))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(LatentDiffusion, 'sample', recorded)
    config, weights = run
    assert infer(config, weights, tmp_path, '--cfg-scale', '2') == 0
    assert scales == [2.0] and osp.isfile(tmp_path / 'samples.png')


@pytest.mark.parametrize('flag, said', [
    ([], f'sample_cfg.cfg_scale {FLOOR}-3.0: give --cfg-scale, or set it >= 1 in the config'),
    (['--cfg-scale', '0.5'], f'--cfg-scale {FLOOR}0.5'),
])
def test_the_floor_holds_where_the_precheck_could_not_read_the_config(
        run, tmp_path, capsys, monkeypatch, flag, said):
    """The config as init_model reads it, where the pre-check could not (its
    load_run_config said None): the scale sampling would use is judged before it
    samples."""
    from mmsora.apis import run_checks
    monkeypatch.setattr(run_checks, 'load_run_config', lambda *args, **kwargs: None)
    monkeypatch.setattr(LatentDiffusion, 'sample', never)
    config, weights = run
    assert infer(config, weights, tmp_path, *flag) == 2
    assert capsys.readouterr().err.splitlines() == [f'error: {said}']
    assert not osp.exists(tmp_path / 'samples.png')


# ------------------------------------------------------------ a video VAE's channels
# the video demo shrunk to 4-channel latents of 2 frames of 4x4 (Wan's tiny VAE:
# spatial factor 4, 4 latent channels)
TINY_VIDEO = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
              'model.denoiser.num_heads=2', 'model.denoiser.input_size=4',
              'model.denoiser.num_frames=2', 'model.denoiser.in_channels=4',
              'model.latent_shape=[4,2,4,4]']


@pytest.fixture
def video_run(repo_root, tmp_path):
    """``(config, weights, wan)``: the video demo with a VideoVAEWrapper of a tiny Wan
    VAE folder ``wan`` (4-channel latents), and a file of its denoiser's weights."""
    torch.manual_seed(0)
    wan = tmp_path / 'wan'
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(wan)
    config = tmp_path / 'video.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, VIDEO_DEMO)!r}]\n"
                      "model = dict(vae=dict(_delete_=True, type='VideoVAEWrapper', "
                      f"class_name='AutoencoderKLWan', pretrained_path={str(wan)!r}))\n")
    model, _ = init_model(str(config), checkpoint=False, cfg_options=TINY_VIDEO)
    assert isinstance(model.vae, VideoVAEWrapper)
    weights = tmp_path / 'video_dit.pt'
    torch.save(model.denoiser.state_dict(), weights)
    return str(config), str(weights), wan


def test_a_video_vae_of_other_latent_channels_is_refused_before_sampling(
        video_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(LatentDiffusion, 'sample', never)
    config, weights, wan = video_run
    eight = json.loads((wan / 'config.json').read_text())
    (wan / 'config.json').write_text(json.dumps(dict(eight, z_dim=8)))  # Wan's key
    argv = [config, '--checkpoint', weights, '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'clips'), '--cfg-options', *TINY_VIDEO]
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: VAE folder {str(wan)!r} makes 8-channel latents (its config.json) but the "
        "model's have 4 (model.latent_shape[0]): give the VAE the model was trained with "
        '(--cfg-options model.vae.pretrained_path=DIR)']


def test_a_video_vae_of_the_models_channels_loads(video_run):
    config, weights, _ = video_run
    model, _ = init_model(config, checkpoint=weights, cfg_options=TINY_VIDEO)
    assert model.vae.latent_channels == 4 == model.latent_shape[0]


@pytest.mark.parametrize('class_name, key', [('AutoencoderKLWan', 'z_dim'),
                                             ('AutoencoderKLCogVideoX', 'latent_channels'),
                                             ('AutoencoderKLLTXVideo', 'latent_channels')])
def test_a_video_vaes_config_states_its_channels_under_its_familys_key(class_name, key):
    vae = VideoVAEWrapper(class_name=class_name, pretrained_path='unused')
    assert vae.config_latent_channels({key: 16}) == 16
    other = 'latent_channels' if key == 'z_dim' else 'z_dim'
    assert vae.config_latent_channels({other: 16}) is None
