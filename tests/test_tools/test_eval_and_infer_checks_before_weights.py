"""tools/test.py and tools/infer.py judge from the config, before the weights load:
test.py's evaluation guiding a denoiser without forward_with_cfg (tools/train.py's
check of the section, which test.py did not make: it stopped at its first batch); the
section a bad sampler setting came from (a config's sample_cfg was blamed on the
evaluation's, an evaluation.sample_cfg that is no dict was named as Python's settings
over the config's); a latent model without a VAE (all its samples drawn, then refused
at the save or the first batch's scoring). infer judges an AutoencoderKL folder with
the VAE's own check_folder: no note of its scale there, a folder without config.json
still refused."""
import os.path as osp

import pytest
import torch

import mmsora.apis
import mmsora.apis.run_checks
from mmsora.models.latent_diffusion import LatentDiffusion
from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.utils.cli import run_cli
from mmsora.utils.config_loading import load_config
from tests.cli_helpers import load_tool, refused
from tests.tiny_models import DEMO

pytestmark = pytest.mark.usefixtures('malloc_calls', 'kept_environ', 'fresh_notes')

MISSING = '/nonexistent/iter_10.pth'  # never read: refused before
# the demo shrunk to 8x8 latents of 4 channels (no VAE: the demo's is None)
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.denoiser.in_channels=4', 'model.latent_shape=[4,8,8]']
NO_VAE = ('model.latent_shape [4, 8, 8] holds 4-channel latents and the model has no VAE '
          '(model.vae) to decode them into pictures: give one, --cfg-options '
          'model.vae.type=AutoencoderKLWrapper model.vae.pretrained_path=DIR (a local '
          'diffusers VAE folder)')


class NoGuidanceDenoiserH5(torch.nn.Module):
    """A denoiser of one's own without forward_with_cfg (given as a class: nothing is
    registered)."""


@pytest.fixture
def not_loaded(monkeypatch):
    """Building the model fails: what is refused here is refused before the weights."""
    def built(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(mmsora.apis, 'init_model', built)


def eval_config(repo_root, tmp_path) -> str:
    """The demo (sample_cfg: ddim, 50 steps, cfg_scale 2) with an evaluation section."""
    path = tmp_path / 'demo_eval.py'
    path.write_text(f'_base_ = [{osp.join(repo_root, DEMO)!r}]\n'
                    'evaluation = dict(num_samples=4, batch_size=2, metrics=[dict('
                    "type='FID', reference='ref.npz')])\n")
    return str(path)


# --------------------------------------------------------------------------- #
#  tools/test.py: guidance against the denoiser                                #
# --------------------------------------------------------------------------- #
def test_test_refuses_guiding_a_denoiser_without_forward_with_cfg(repo_root, tmp_path,
                                                                   monkeypatch, not_loaded):
    config = eval_config(repo_root, tmp_path)
    cfg = load_config(config)
    cfg.model.denoiser = dict(type=NoGuidanceDenoiserH5)
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config',
                        lambda *args, **kwargs: (cfg, None))
    tool = load_tool('test')
    assert refused(tool.main, [config, MISSING]) == (
        'evaluation (tools/test.py) samples with guidance (sample_cfg.cfg_scale=2) but '
        'model.denoiser NoGuidanceDenoiserH5 has no forward_with_cfg: set '
        'sample_cfg.cfg_scale=1, or add forward_with_cfg as DiT has it (README, "Your own '
        'modules")')
    cfg.evaluation.sample_cfg = dict(cfg_scale=4.0)  # the section's own, named so
    assert refused(tool.main, [config, MISSING]).startswith(
        'evaluation (tools/test.py) samples with guidance (evaluation.sample_cfg.'
        'cfg_scale=4) but model.denoiser NoGuidanceDenoiserH5 has no forward_with_cfg: '
        'set evaluation.sample_cfg.cfg_scale=1, ')
    cfg.evaluation.sample_cfg = dict(cfg_scale=1.0)  # no guidance: on to the weights
    with pytest.raises(AssertionError, match='the model was built'):
        tool.main([config, MISSING])


def test_infer_refuses_guiding_a_denoiser_without_forward_with_cfg(repo_root, tmp_path,
                                                                    monkeypatch, not_loaded):
    """infer judged it once the weights had loaded (LatentDiffusion.sample)."""
    config = osp.join(repo_root, DEMO)  # (sample_cfg.cfg_scale=2)
    cfg = load_config(config)
    cfg.model.denoiser = dict(type=NoGuidanceDenoiserH5)
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config',
                        lambda *args, **kwargs: (cfg, None))
    infer = load_tool('infer')
    argv = [config, '--checkpoint', MISSING, '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'samples.png')]
    tail = ('but model.denoiser NoGuidanceDenoiserH5 has no forward_with_cfg: sample with '
            '--cfg-scale 1, or add forward_with_cfg as DiT has it (README, "Your own '
            'modules")')
    assert refused(infer.main, argv) == (
        f'this run samples with guidance (sample_cfg.cfg_scale=2) {tail}')
    assert refused(infer.main, argv + ['--cfg-scale', '4.5']) == (
        f'this run samples with guidance (--cfg-scale=4.5) {tail}')
    with pytest.raises(AssertionError, match='the model was built'):  # no guidance
        infer.main(argv + ['--cfg-scale', '1'])


# --------------------------------------------------------------------------- #
#  tools/test.py: the section a bad setting came from                          #
# --------------------------------------------------------------------------- #
def test_test_names_the_section_of_a_bad_sampler_setting(repo_root, tmp_path, not_loaded):
    config = eval_config(repo_root, tmp_path)
    tool = load_tool('test')
    # an evaluation.sample_cfg that is no dict: its key, and the by-name form
    assert refused(tool.main, [config, MISSING, '--cfg-options',
                               'evaluation.sample_cfg=ddpm']) == (
        "evaluation.sample_cfg must be a dict of sampling settings (evaluation.sample_cfg="
        "dict(sampler='ddim', num_steps=50, ...)), got 'ddpm': give its entries by name, "
        'as --cfg-options evaluation.sample_cfg.sampler=ddpm')
    # the config's own sample_cfg: named so, not as the evaluation's
    assert refused(tool.main, [config, MISSING, '--cfg-options', 'sample_cfg.eta=-0.5']) == (
        "the config's sampler settings (sample_cfg, which the evaluation samples with): "
        "eta=-0.5 is not a number in [0, 1] (DDIM's noise: 0 none, 1 DDPM's posterior "
        "variance); set them with --cfg-options sample_cfg.KEY=VALUE")
    # the evaluation's over it: as before
    assert refused(tool.main, [config, MISSING, '--cfg-options',
                               'evaluation.sample_cfg.eta=-0.5']).startswith(
        "the evaluation's sampler settings (evaluation.sample_cfg over the config's "
        'sample_cfg): eta=-0.5 is not a number in [0, 1]')
    # an evaluation that picks another sampler leaves the config's DDIM options behind
    with pytest.raises(AssertionError, match='the model was built'):
        tool.main([config, MISSING, '--cfg-options', 'sample_cfg.eta=0.5',
                   'evaluation.sample_cfg.sampler=ddpm'])


# --------------------------------------------------------------------------- #
#  A latent model without a VAE                                                 #
# --------------------------------------------------------------------------- #
def test_infer_refuses_latents_without_a_vae_before_loading(repo_root, tmp_path,
                                                             not_loaded, tiny_vae_dir):
    config = osp.join(repo_root, DEMO)
    infer = load_tool('infer')
    argv = [config, '--checkpoint', MISSING, '--num-samples', '1', '--steps', '2',
            '--out', str(tmp_path / 'samples.png'), '--cfg-options', *TINY]
    assert refused(infer.main, argv) == NO_VAE
    clips = [config, '--checkpoint', MISSING, '--num-samples', '1', '--out',
             str(tmp_path / 'clips'), '--cfg-options', *TINY[:-1],
             'model.latent_shape=[4,2,8,8]', 'model.denoiser.type=VideoDiT',
             'model.denoiser.num_frames=2']
    assert refused(infer.main, clips) == NO_VAE.replace('[4, 8, 8]', '[4, 2, 8, 8]')
    assert not osp.exists(tmp_path / 'samples.png')
    # the options it names give the model a VAE: on to the weights
    with pytest.raises(AssertionError, match='the model was built'):
        infer.main(argv + ['model.vae.type=AutoencoderKLWrapper',
                           f'model.vae.pretrained_path={tiny_vae_dir}'])
    # pictures without a VAE (the demo's own 3 channels) are no latents
    with pytest.raises(AssertionError, match='the model was built'):
        infer.main(argv[:-len(TINY)] + ['model.denoiser.depth=2'])


def test_test_refuses_latents_without_a_vae_before_loading(repo_root, tmp_path,
                                                           not_loaded):
    config = eval_config(repo_root, tmp_path)
    assert refused(load_tool('test').main,
                   [config, MISSING, '--cfg-options', *TINY]) == NO_VAE


def test_infer_refuses_them_before_sampling_where_the_config_was_not_read(
        repo_root, tmp_path, monkeypatch):
    """The model built (the pre-check could not read its config): refused before any
    sampling step, not at the save."""
    from mmsora.apis import init_model
    model, _ = init_model(osp.join(repo_root, DEMO), checkpoint=False, cfg_options=TINY)
    weights = tmp_path / 'dit.pt'
    torch.save(model.denoiser.state_dict(), weights)
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config', lambda *a, **k: None)

    def sample(*args, **kwargs):
        raise AssertionError('sampled')
    monkeypatch.setattr(LatentDiffusion, 'sample', sample)
    assert refused(load_tool('infer').main, [
        osp.join(repo_root, DEMO), '--checkpoint', str(weights), '--num-samples', '1',
        '--out', str(tmp_path / 'samples.png'), '--cfg-options', *TINY]) == NO_VAE


# --------------------------------------------------------------------------- #
#  infer: the VAE folder judged by the VAE's own check_folder                  #
# --------------------------------------------------------------------------- #


def test_infer_says_no_scale_note_the_run_cannot_follow(repo_root, tmp_path, capsys,
                                                        sdxl_like_vae):
    """The note (tools/train.py's, before the latents are extracted) advises the
    folder's own scale: the run's latents were trained at the config's, so infer
    decodes with that and says nothing."""
    config = tmp_path / 'latent.py'
    config.write_text(f'_base_ = [{osp.join(repo_root, DEMO)!r}]\n'
                      "model = dict(vae=dict(_delete_=True, type='AutoencoderKLWrapper', "
                      f'pretrained_path={sdxl_like_vae!r}, scale_factor=0.18215))\n')
    from mmsora.apis import init_model
    model, _ = init_model(str(config), checkpoint=False, cfg_options=TINY)
    torch.save(model.denoiser.state_dict(), tmp_path / 'dit.pt')
    capsys.readouterr()
    argv = [str(config), '--checkpoint', str(tmp_path / 'dit.pt'), '--num-samples', '1',
            '--steps', '2', '--out', str(tmp_path / 'samples.png'), '--cfg-options', *TINY]
    assert run_cli(lambda: load_tool('infer').main(argv)) == 0
    assert osp.isfile(tmp_path / 'samples.png')
    assert 'note:' not in capsys.readouterr().err
    # the check before a run still says it
    model.vae.check_folder()
    assert capsys.readouterr().err.startswith(
        f'note: VAE folder {osp.normpath(sdxl_like_vae)} says scaling_factor 0.13025')


def test_a_folder_without_config_json_is_refused_before_sampling_alone(tmp_path):
    """check_folder(sampling=True) (init_model's) refuses it in the load's words;
    before a run (tools/train.py) it is left to the load."""
    (tmp_path / 'empty').mkdir()
    wrapper = AutoencoderKLWrapper(pretrained_path=str(tmp_path / 'empty'))
    wrapper.check_folder()
    with pytest.raises(FileNotFoundError) as info:
        wrapper.check_folder(sampling=True)
    assert str(info.value) == (f"VAE folder {str(tmp_path / 'empty')!r} has no config.json "
                               '(not a diffusers AutoencoderKL folder)')


def test_a_latent_shape_that_is_no_sequence_is_left_to_the_build():
    """(list(4) was a TypeError traceback before the model's build could say it)"""
    from mmsora.apis.inference import check_makes_pictures
    from mmsora.utils.cli import UserError
    check_makes_pictures(None, 4)
    check_makes_pictures(None, (3, 8, 8))
    with pytest.raises(UserError, match=r'model.latent_shape \[4, 8, 8\] holds 4-channel'):
        check_makes_pictures(None, (4, 8, 8))
