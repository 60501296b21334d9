"""A SiT user's walk-through: the objective settings a checkpoint was trained with
against the config it is sampled (or trained on) with, SiT's own training files, the
learned-sigma hint on a Transport model, and tools/infer.py's NFE line and notes.

Before: a run fine-tuned with timestep_convention=dit (docs/sit.md's DiT -> SiT
recipe), or trained with another path / prediction, was sampled through the SiT
config without a word (wrong samples); a SiT training file was called a DiT one; the
learned-sigma hint named a key Transport refuses; the NFE line gave the last batch's
alone; --steps with ode_dopri5 went unused silently; and --help's SDE example failed
on every SiT config of the repo."""
import argparse
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from mmsora.registry import DIFFUSION, MODELS
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config
from tools import infer
from tools.train import build_train_config
from tools.train import parse_args as train_args

SIT = 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py'
DIT = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.latent_shape=[3,8,8]']
TRAIN_TINY = [*TINY, 'train_dataloader.dataset.size=8', 'param_scheduler=[]',
              'train_cfg.max_iters=4']
pytestmark = pytest.mark.usefixtures('malloc_calls', 'fresh_notes')



def sit_model_cfg(repo_root, *options):
    return apply_cfg_options(load_config(osp.join(repo_root, SIT)), [*TINY, *options])


def save_run(repo_root, path, *trained):
    """An mmengine checkpoint of a tiny SiT run trained with the ``trained`` options
    (its config text in meta, as mmengine saves it)."""
    cfg = sit_model_cfg(repo_root, *trained)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save(dict(meta=dict(iter=2, cfg=Config(dict(model=cfg.model)).pretty_text),
                    state_dict=model.state_dict()), path)
    return str(path)


def save_sit_file(repo_root, path, path_type='Linear', prediction='velocity'):
    """A file as SiT's train.py saves it: args is its argparse Namespace."""
    torch.manual_seed(0)
    state = MODELS.build(sit_model_cfg(repo_root).model).denoiser.state_dict()
    args = argparse.Namespace(model='SiT-XL/2', path_type=path_type, prediction=prediction,
                              loss_weight=None, train_eps=None, sample_eps=None)
    torch.save({'model': state, 'ema': state, 'opt': {}, 'args': args}, path)
    return str(path)


def sample(repo_root, tmp_path, run, *args, config=SIT, checkpoint=None, options=()):
    argv = [run if config is None else osp.join(repo_root, config)]
    if checkpoint:
        argv += ['--checkpoint', checkpoint]
    argv += ['--num-samples', '2', '--out', str(tmp_path / 'grid.png'), '--device', 'cpu',
             *args, '--cfg-options', *TINY, *options]
    infer.main(argv)
    return tmp_path / 'grid.png'


# ------------------------------------------------ finding 1: objective settings
@pytest.mark.parametrize('trained, setting', [
    ('model.diffusion.timestep_convention=dit', 'timestep_convention=dit'),
    ('model.diffusion.path=GVP', 'path=GVP'),
    ('model.diffusion.prediction=noise', 'prediction=noise'),
])
def test_infer_refuses_a_run_trained_with_other_objective_settings(repo_root, tmp_path,
                                                                   trained, setting):
    run = save_run(repo_root, tmp_path / 'iter_2.pth', trained)
    name, value = setting.split('=')
    ours = dict(timestep_convention='sit', path='Linear', prediction='velocity')[name]
    with pytest.raises(UserError, match=(
            rf'^--checkpoint {re.escape(run)}: trained with {setting}, the config samples '
            rf'with {name}={ours}: its outputs would be misread \(wrong samples\): sample as '
            rf'trained, with --cfg-options model.diffusion.{setting}$')):
        sample(repo_root, tmp_path, None, checkpoint=run)
    # what the message says to give: sampled
    assert osp.isfile(sample(repo_root, tmp_path, None, checkpoint=run,
                             options=[f'model.diffusion.{setting}']))


def test_infer_names_every_differing_setting_and_passes_sampling_ones(repo_root, tmp_path,
                                                                      capsys):
    run = save_run(repo_root, tmp_path / 'iter_2.pth', 'model.diffusion.path=GVP',
                   'model.diffusion.timestep_convention=dit', 'model.diffusion.sample_eps=0.01')
    with pytest.raises(UserError, match=(
            'trained with path=GVP, timestep_convention=dit, the config samples with '
            'path=Linear, timestep_convention=sit: .* --cfg-options model.diffusion.path=GVP '
            'model.diffusion.timestep_convention=dit$')):
        sample(repo_root, tmp_path, None, checkpoint=run)
    # sample_eps is sampling's alone: another value is no mistake; time_shift a note
    capsys.readouterr()
    sample(repo_root, tmp_path, None, checkpoint=run, options=[
        'model.diffusion.path=GVP', 'model.diffusion.timestep_convention=dit',
        'model.diffusion.time_shift=3.0'])
    err = capsys.readouterr().err
    assert (f'note: --checkpoint {run}: trained with time_shift=1.0, sampled with '
            'time_shift=3.0 (the fixed-step samplers\' time grid; to sample on the grid it '
            'was trained for: --cfg-options model.diffusion.time_shift=1.0)') in err, err


def test_infer_of_a_work_dir_samples_with_its_own_config(repo_root, tmp_path):
    """A work dir's dumped config is the run's: it matches (kept working); an override
    of the objective there is refused alike."""
    work = tmp_path / 'work'
    work.mkdir()
    cfg = sit_model_cfg(repo_root, 'model.diffusion.timestep_convention=dit')
    cfg.dump(str(work / 'sit.py'))
    run = save_run(repo_root, work / 'iter_2.pth', 'model.diffusion.timestep_convention=dit')
    (work / 'last_checkpoint').write_text(run)
    assert osp.isfile(sample(repo_root, tmp_path, str(work), config=None))
    with pytest.raises(UserError, match=rf'^{re.escape(str(work))}: its checkpoint '
                                        rf'{re.escape(run)}: trained with '
                                        r'timestep_convention=dit, the config samples with '
                                        r'timestep_convention=sit'):
        sample(repo_root, tmp_path, str(work), config=None,
               options=['model.diffusion.timestep_convention=sit'])


def test_gaussian_settings_are_compared_too(repo_root, tmp_path):
    dit = apply_cfg_options(load_config(osp.join(repo_root, DIT)), TINY)
    saved = Config(dict(model=dict(dit.model, diffusion=dict(
        dit.model.diffusion, beta_schedule='linear'))))
    run = tmp_path / 'iter_2.pth'
    torch.save(dict(meta=dict(cfg=saved.pretty_text),
                    state_dict=MODELS.build(dit.model).state_dict()), run)
    with pytest.raises(UserError, match=r'trained with beta_schedule=linear, the config '
                                        r'samples with beta_schedule=squaredcos_cap_v2'):
        sample(repo_root, tmp_path, None, config=DIT, checkpoint=str(run))
    # learn_sigma: the denoiser's is named with it (LatentDiffusion refuses them apart)
    saved = Config(dict(model=dict(dit.model, diffusion=dict(dit.model.diffusion,
                                                             learn_sigma=False))))
    torch.save(dict(meta=dict(cfg=saved.pretty_text)), run)
    with pytest.raises(UserError, match=r'trained with learn_sigma=False, .*--cfg-options '
                                        r'model.diffusion.learn_sigma=False '
                                        r'model.denoiser.learn_sigma=False$'):
        sample(repo_root, tmp_path, None, config=DIT, checkpoint=str(run))


# ------------------------------------------------ finding 2: the learn_sigma hint
def test_learn_sigma_hint_names_the_objectives_key_only_where_it_has_one(repo_root):
    from mmsora.utils.weight_loading import load_state_dict_checked
    sigma = MODELS.build(sit_model_cfg(repo_root, 'model.denoiser.learn_sigma=True').model)
    plain = MODELS.build(sit_model_cfg(repo_root).model)
    with pytest.raises(ValueError) as error:
        load_state_dict_checked(plain.denoiser, sigma.denoiser.state_dict(), 'f.pth',
                                objective=plain.diffusion)
    assert str(error.value).endswith('set model.denoiser.learn_sigma=True'), error.value
    # the hint followed: the model builds (model.diffusion.learn_sigma=True was refused
    # as an unknown key of Transport)
    MODELS.build(sit_model_cfg(repo_root, 'model.denoiser.learn_sigma=True').model)
    with pytest.raises(ValueError) as error:
        load_state_dict_checked(plain.denoiser, sigma.denoiser.state_dict(), 'f.pth',
                                objective='GaussianDiffusion')
    assert str(error.value).endswith('set model.denoiser.learn_sigma=True and '
                                     'model.diffusion.learn_sigma=True'), error.value
    # a caller that does not know the objective: said for GaussianDiffusion alone
    with pytest.raises(ValueError) as error:
        load_state_dict_checked(plain.denoiser, sigma.denoiser.state_dict(), 'f.pth')
    assert str(error.value).endswith('set model.denoiser.learn_sigma=True (with '
                                     'GaussianDiffusion, model.diffusion.learn_sigma=True '
                                     'alike)'), error.value


def test_infer_learn_sigma_mismatch_does_not_send_a_sit_user_to_a_refused_key(
        repo_root, tmp_path):
    run = save_run(repo_root, tmp_path / 'iter_2.pth', 'model.denoiser.learn_sigma=True')
    with pytest.raises(ValueError) as error:
        sample(repo_root, tmp_path, None, checkpoint=run)
    assert "(and the objective's learn_sigma)" not in str(error.value)
    # the objective is known where the weights load: Transport's has no learn_sigma
    assert str(error.value).endswith('set model.denoiser.learn_sigma=True')
    # and so for train.py --load-from a DiT file with the head
    torch.manual_seed(0)
    dit = MODELS.build(sit_model_cfg(repo_root, 'model.denoiser.learn_sigma=True').model)
    torch.save(dit.denoiser.state_dict(), tmp_path / 'dit.pt')
    with pytest.raises(UserError) as error:
        build_train_config(train_args([osp.join(repo_root, SIT), '--work-dir',
                                       str(tmp_path / 'w'), '--load-from',
                                       str(tmp_path / 'dit.pt'), '--cfg-options', *TINY]))
    assert str(error.value).endswith('set model.denoiser.learn_sigma=True'), str(error.value)


# ------------------------------------------------ finding 3: SiT's training files
def test_a_sit_training_file_loads_safely_and_is_recognised(repo_root, tmp_path):
    from mmsora.utils.checkpoint import load_checkpoint_file
    from mmsora.utils.trained_settings import checkpoint_objective, training_file_kind
    loaded = load_checkpoint_file(save_sit_file(repo_root, tmp_path / 's.pt', 'GVP', 'noise'))
    assert isinstance(loaded['args'], argparse.Namespace)  # weights_only accepts it
    assert training_file_kind(loaded) == 'SiT'
    assert checkpoint_objective(loaded) == dict(type='Transport', path='GVP',
                                                prediction='noise', timestep_convention='sit',
                                                time_shift=1.0)
    # DiT's / fast-DiT's args name no path_type; a fork's own names say nothing
    assert training_file_kind(dict(loaded, args=argparse.Namespace(model='DiT-XL/2'))) == \
        'DiT / fast-DiT'
    assert checkpoint_objective(dict(loaded, args=dict(path_type='linear'))) is None


def test_train_names_a_sit_file_and_its_parametrisation(repo_root, tmp_path, capsys,
                                                        monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')  # (tools/train.py's parse_args sets it)
    noise = save_sit_file(repo_root, tmp_path / 'noise.pt', prediction='noise')
    sit = osp.join(repo_root, SIT)
    with pytest.raises(UserError, match=rf'^--resume {re.escape(noise)}: a SiT training '
                                        r'checkpoint \(model, ema, opt\)'):
        build_train_config(train_args([sit, '--work-dir', str(tmp_path / 'a'), '--resume',
                                       noise, '--cfg-options', *TRAIN_TINY]))
    capsys.readouterr()
    build_train_config(train_args([sit, '--work-dir', str(tmp_path / 'b'), '--load-from',
                                   noise, '--cfg-options', *TRAIN_TINY]))
    err = capsys.readouterr().err
    assert (f"note: --load-from {noise}: a SiT training file: its training continues: the "
            "model starts from its 'model' weights, the EMA from its 'ema' weights") in err, err
    assert (f'note: --load-from {noise}: trained with prediction=noise, this run trains with '
            'prediction=velocity from its weights (a fine-tune to another parametrisation; '
            'to train on as it was: --cfg-options model.diffusion.prediction=noise)') in err
    velocity = save_sit_file(repo_root, tmp_path / 'velocity.pt')
    build_train_config(train_args([sit, '--work-dir', str(tmp_path / 'c'), '--load-from',
                                   velocity, '--cfg-options', *TRAIN_TINY]))
    assert 'trained with' not in capsys.readouterr().err


def test_infer_refuses_a_sit_file_of_another_parametrisation(repo_root, tmp_path):
    noise = save_sit_file(repo_root, tmp_path / 'noise.pt', prediction='noise')
    with pytest.raises(UserError, match=rf'^--checkpoint {re.escape(noise)}: trained with '
                                        r'prediction=noise \(its SiT args\), the config '
                                        r'samples with prediction=velocity: .*--cfg-options '
                                        r'model.diffusion.prediction=noise$'):
        sample(repo_root, tmp_path, None, checkpoint=noise)
    assert osp.isfile(sample(repo_root, tmp_path, None, checkpoint=noise,
                             options=['model.diffusion.prediction=noise']))
    with pytest.raises(UserError, match=r'trained with the Transport objective \(a SiT '
                                        r'training file\), the config samples with '
                                        r'GaussianDiffusion: give a SiT config'):
        sample(repo_root, tmp_path, None, config=DIT, checkpoint=noise)
    velocity = save_sit_file(repo_root, tmp_path / 'velocity.pt')
    assert osp.isfile(sample(repo_root, tmp_path, None, checkpoint=velocity))


# ------------------------------------------------ finding 4: NFE line, notes, help
@DIFFUSION.register_module(name='BatchSizedEvaluations', force=True)
class BatchSizedEvaluations:
    """One Euler step per sample of the batch: an NFE that differs between batches,
    as an adaptive sampler's does."""

    def loss(self, model, x0, model_kwargs=None):
        raise NotImplementedError

    def sample(self, model_fn, noise, model_kwargs, **kwargs):
        x = noise
        for _ in range(len(noise)):
            x = x - 0.1 * model_fn(x, torch.zeros(len(x)), **model_kwargs)
        self.last_nfe = len(noise)
        return x


def test_nfe_line_gives_the_range_and_total_when_batches_differ(repo_root, tmp_path,
                                                                 capsys):
    config = tmp_path / 'own.py'
    config.write_text(f'_base_ = [{osp.join(repo_root, DIT)!r}]\n'
                      "model = dict(diffusion=dict(_delete_=True, "
                      "type='BatchSizedEvaluations'), denoiser=dict(learn_sigma=False))\n"
                      'sample_cfg = dict(_delete_=True, cfg_scale=1.0)\n')
    weights = tmp_path / 'own.pt'
    model = MODELS.build(apply_cfg_options(load_config(str(config)), TINY).model)
    torch.save(model.denoiser.state_dict(), weights)
    argv = [str(config), '--checkpoint', str(weights), '--batch-size', '2', '--device',
            'cpu', '--out', str(tmp_path / 'own.png'), '--cfg-options', *TINY]
    infer.main(argv + ['--num-samples', '5'])
    out = capsys.readouterr().out  # batches of 2, 2 and 1
    assert out.rstrip().endswith('; 1 to 2 model evaluations (NFE) per batch, 5 over the 3 '
                                 'batches'), out
    infer.main(argv + ['--num-samples', '4'])
    assert capsys.readouterr().out.rstrip().endswith('; 2 model evaluations (NFE) per batch')


def test_steps_with_dopri5_is_said_to_be_unused(repo_root, tmp_path, capsys):
    sample(repo_root, tmp_path, None, '--sampler', 'ode_dopri5', '--steps', '100',
           '--sampler-options', 'atol=1e-3', 'rtol=1e-2',
           checkpoint=save_run(repo_root, tmp_path / 'iter_2.pth'))
    assert ('note: --steps 100: ode_dopri5 is adaptive and takes the steps its tolerances '
            'need') in capsys.readouterr().err


def test_help_sde_example_samples_on_the_repos_sit_configs(repo_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        infer.parse_args(['--help'])
    shown = ' '.join(capsys.readouterr().out.split())  # (argparse wraps the lines)
    example = re.search(r'e\.g\. .*?, (\S+=\S+ \S+=\S+) \(sde_\*\)', shown)[1].split()
    run = save_run(repo_root, tmp_path / 'iter_2.pth')
    assert osp.isfile(sample(repo_root, tmp_path, None, '--sampler', 'sde_euler', '--steps',
                             '3', '--sampler-options', *example, checkpoint=run))


def test_resume_refuses_a_run_trained_with_other_objective_settings(repo_root, tmp_path):
    """--resume of a timestep_convention=dit fine-tune under the SiT config as it is
    trained on from weights that read another time, silently."""
    from mmsora.engine.resume_checks import check_resume_matches
    run = save_run(repo_root, tmp_path / 'iter_2.pth', 'model.diffusion.timestep_convention=dit')
    with pytest.raises(UserError, match=(
            rf'^--resume {re.escape(run)}: saved by a run trained with timestep_convention=dit, '
            r'this config trains with timestep_convention=sit: resume as it was trained '
            r'\(--cfg-options model.diffusion.timestep_convention=dit\), or start from its '
            r'weights with --load-from$')):
        check_resume_matches(sit_model_cfg(repo_root), None, run)
    check_resume_matches(sit_model_cfg(repo_root, 'model.diffusion.timestep_convention=dit'),
                         None, run)


def test_a_wrong_sampler_is_refused_before_the_weights_load(repo_root, tmp_path,
                                                             monkeypatch):
    """A sampler name or option value the objective refuses was named once the model
    had loaded (30 s and 5.7 GB for Stable Cascade lite; walk-through s)."""
    import mmsora.apis

    def built(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(mmsora.apis, 'init_model', built)
    with pytest.raises(ValueError, match=r"^unknown sampler 'ddim' for Transport"):
        sample(repo_root, tmp_path, None, '--sampler', 'ddim', checkpoint='/nonexistent.pth')
    with pytest.raises(ValueError, match=r'^diffusion_norm=-1 is not a number >= 0'):
        sample(repo_root, tmp_path, None, '--sampler', 'sde_euler', '--sampler-options',
               'diffusion_norm=-1', checkpoint='/nonexistent.pth')
