"""A researcher's walk-through with modules of their own (a DiT subclass, a
GaussianDiffusion subclass, registered from their package through custom_imports):
the checks of a checkpoint against the config it is sampled, resumed or exported
with.

Before: the run's recorded config was read by importing its custom_imports, and a
failure (the package not on sys.path) hid it, so a ParallelDiT run was written as a
diffusers DiT and sampled through a DiT config without a word; the denoiser's class
was never compared; an objective subclass's schedule was not checked; and respacing
a GaussianDiffusion subclass dropped its own arguments (a TypeError when sampling,
or its default silently)."""
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config

from mmsora.diffusion.gaussian import GaussianDiffusion
from mmsora.models import DiT
from mmsora.registry import DIFFUSION
from mmsora.utils import cli
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config
from mmsora.utils.trained_settings import (check_trained_objective, checkpoint_objective,
                                           objective_differences, objective_settings,
                                           said_objective_differences, trained_model_config)
from tools import export_denoiser

DIT = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
TINY = ['model.denoiser.hidden_size=64', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=4', 'model.denoiser.input_size=8',
        'model.latent_shape=[3,8,8]']
# A package of one's own that does not import here (not on sys.path: the tools run
# from another folder than the project's).
GONE = 'myidea_not_on_this_path'
pytestmark = pytest.mark.usefixtures('fresh_notes')


def tiny_dit_cfg(repo_root, *options):
    return apply_cfg_options(load_config(osp.join(repo_root, DIT)), [*TINY, *options])


def save_run(path, model_cfg, custom_imports=(GONE, )):
    """An mmengine checkpoint of a run of ``model_cfg`` (its config text in meta, as
    mmengine saves it, with the run's custom_imports), with a DiT's weights of the
    tiny config's shape: a DiT subclass's keys are its base's."""
    cfg = dict(model_cfg)
    denoiser = {k: v for k, v in cfg['denoiser'].items() if k != 'type'}
    torch.manual_seed(0)
    state = {f'denoiser.{k}': v for k, v in DiT(**denoiser).state_dict().items()}
    text = Config(dict(model=cfg, custom_imports=dict(
        imports=list(custom_imports), allow_failed_imports=False))).pretty_text
    torch.save(dict(meta=dict(iter=2, cfg=text), state_dict=state), path)
    return str(path)


def run_cfg(repo_root, denoiser='ParallelDiT', diffusion='GaussianDiffusion', **settings):
    """The tiny DiT config's model as a run of one's own trained it."""
    model = tiny_dit_cfg(repo_root).model.to_dict()
    model['denoiser']['type'] = denoiser
    model['diffusion'] = dict(model.get('diffusion') or {}, type=diffusion, **settings)
    return model


# ---------------------------------------------------------------------------
# 1. The recorded config, read without importing its custom_imports
# ---------------------------------------------------------------------------

def test_recorded_config_is_read_without_its_custom_imports(repo_root, tmp_path):
    path = save_run(tmp_path / 'iter_2.pth', run_cfg(repo_root))
    model = trained_model_config(torch.load(path, weights_only=True))
    assert model is not None and model['denoiser']['type'] == 'ParallelDiT'
    assert checkpoint_objective(torch.load(path, weights_only=True))['denoiser'] == \
        'ParallelDiT'


def test_custom_imports_of_a_recorded_config_are_not_run(repo_root, tmp_path,
                                                         monkeypatch):
    """Reading a checkpoint runs none of its run's code, importable or not."""
    (tmp_path / 'marker_pkg_cmc.py').write_text(
        'import os\nopen(os.environ["CMC_MARK"], "w").close()\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv('CMC_MARK', str(tmp_path / 'imported'))
    path = save_run(tmp_path / 'iter_2.pth', run_cfg(repo_root),
                    custom_imports=('marker_pkg_cmc', ))
    try:
        assert trained_model_config(torch.load(path, weights_only=True)) is not None
        assert not (tmp_path / 'imported').exists()
    finally:
        sys.modules.pop('marker_pkg_cmc', None)  # (imported before the fix)


def test_infer_refuses_a_subclass_run_for_a_dit_config(repo_root, tmp_path):
    """A ParallelDiT run with the stock objective: its keys are a DiT's, so it loaded
    into the DiT config and was sampled as a DiT without a word."""
    path = save_run(tmp_path / 'iter_2.pth', run_cfg(repo_root))
    with pytest.raises(UserError) as e:
        check_trained_objective(path, tiny_dit_cfg(repo_root).model)
    line = str(e.value)
    assert 'denoiser=ParallelDiT' in line and 'denoiser=DiT' in line
    assert 'model.denoiser.type=ParallelDiT' in line and 'its work dir' in line
    check_trained_objective(path, run_cfg(repo_root))  # its own config: sampled


def test_test_py_refuses_it_before_loading_too(repo_root, tmp_path, monkeypatch, capsys):
    """tools/test.py never compared the checkpoint's objective or denoiser with the
    config's: the ParallelDiT run was scored as a DiT."""
    from tools import test as test_tool

    def no_loading(*args, **kwargs):
        raise AssertionError('the weights were loaded before the refusal')
    monkeypatch.setattr('mmsora.apis.init_model', no_loading)
    path = save_run(tmp_path / 'iter_2.pth', run_cfg(repo_root))
    fid = osp.join(repo_root, 'configs/_base_/evaluation/fid50k_imagenet256.py')
    code = cli.run_cli(lambda: test_tool.main([osp.join(repo_root, DIT), str(path),
                                               '--evaluation', fid, '--cfg-options', *TINY]))
    err = capsys.readouterr().err
    assert code == 2 and f'error: the checkpoint {path}: trained with denoiser=ParallelDiT' \
        in err, err


def test_infer_refuses_a_subclass_objective_it_cannot_import(repo_root, tmp_path):
    path = save_run(tmp_path / 'iter_2.pth',
                    run_cfg(repo_root, 'DiT', 'MinSNRGaussianDiffusion'))
    with pytest.raises(UserError, match='trained with the MinSNRGaussianDiffusion '
                       'objective, the config samples with GaussianDiffusion'):
        check_trained_objective(path, tiny_dit_cfg(repo_root).model)


def test_shipped_denoisers_are_told_apart_by_their_weights():
    """DiT into VideoDiT (an image run inflated, --load-from) is no difference to
    name: their weights differ, and the load says so."""
    theirs = dict(type='GaussianDiffusion', denoiser='DiT')
    assert objective_differences(theirs, dict(theirs, denoiser='VideoDiT')) == []
    assert objective_differences(theirs, dict(theirs, denoiser='ParallelDiT')) == [
        ('denoiser', 'DiT', 'ParallelDiT')]
    assert objective_settings(dict(denoiser=dict(type='mmsora.DiT')))['denoiser'] == 'DiT'
    said = said_objective_differences([('denoiser', 'ParallelDiT', 'DiT')])
    assert said[0] == 'denoiser=ParallelDiT' and said[1] == 'denoiser=DiT'
    assert said[2].startswith('model.denoiser.type=ParallelDiT, or give the run')


# ---------------------------------------------------------------------------
# 4. export_denoiser --diffusers of a run of one's own
# ---------------------------------------------------------------------------

def test_export_refuses_diffusers_for_a_subclass_run(repo_root, tmp_path):
    path = save_run(tmp_path / 'iter_2.pth', run_cfg(repo_root))
    out = tmp_path / 'pdit_diff'
    with pytest.raises(UserError, match="this run's denoiser is a ParallelDiT: export it "
                       'without --diffusers'):
        export_denoiser.main([path, '--diffusers', '--num-heads', '4', '--out', str(out)])
    assert not out.exists()


def test_export_refuses_diffusers_for_weights_not_a_dit(tmp_path):
    conv = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 8, 3))
    path = tmp_path / 'conv.pt'
    torch.save({f'denoiser.{k}': v for k, v in conv.state_dict().items()}, path)
    with pytest.raises(UserError, match=r"not a DiT's \(no x_embedder.proj.weight\)"):
        export_denoiser.main([str(path), '--diffusers', '--out', str(tmp_path / 'd')])


def test_export_names_a_run_config_without_heads(tmp_path):
    """A run config that does not give the heads is not called 'no run config': the
    DiT was built with DiT's default heads, its run config's
    (tests/test_tools/test_export_default_heads.py)."""
    with pytest.raises(UserError, match=r"--num-heads 4, but its run config's "
                       r"model\.denoiser\.num_heads \(not given: DiT's default\) is 16"):
        export_denoiser.write_diffusers(
            {'x_embedder.proj.weight': torch.zeros(48, 4, 2, 2)},
            dict(type='DiT', hidden_size=48), 4, str(tmp_path / 'd'), 'iter_2.pth')


# ---------------------------------------------------------------------------
# 3. Objective settings of a subclass: its base's
# ---------------------------------------------------------------------------

@pytest.fixture
def min_snr():
    """A GaussianDiffusion subclass registered as a user's package registers it,
    taken out again after the test."""
    class MinSNRTestDiffusion(GaussianDiffusion):
        def __init__(self, snr_gamma=5.0, **kwargs):
            super().__init__(**kwargs)
            self.snr_gamma = snr_gamma

    DIFFUSION.register_module(module=MinSNRTestDiffusion)
    yield MinSNRTestDiffusion
    DIFFUSION._module_dict.pop('MinSNRTestDiffusion', None)


def test_subclass_objective_settings_are_compared(min_snr):
    trained = objective_settings(dict(diffusion=dict(type='MinSNRTestDiffusion')))
    assert trained['beta_schedule'] == 'linear'  # (the base constructor's default)
    resumed = objective_settings(dict(diffusion=dict(
        type='MinSNRTestDiffusion', beta_schedule='squaredcos_cap_v2')))
    assert objective_differences(trained, resumed) == [
        ('beta_schedule', 'linear', 'squaredcos_cap_v2')]
    assert objective_differences(trained, trained) == []


def test_resume_refuses_a_subclass_run_with_another_schedule(repo_root, tmp_path,
                                                             min_snr):
    """tools/train.py --resume's check (the functions it calls) and infer's."""
    path = save_run(tmp_path / 'iter_2.pth',
                    run_cfg(repo_root, 'DiT', 'MinSNRTestDiffusion'))
    checkpoint = torch.load(path, weights_only=True)
    # (the walk-through's --resume --cfg-options model.diffusion.beta_schedule=linear)
    now = run_cfg(repo_root, 'DiT', 'MinSNRTestDiffusion', beta_schedule='linear')
    assert objective_differences(checkpoint_objective(checkpoint),
                                 objective_settings(now)) == [
        ('beta_schedule', 'squaredcos_cap_v2', 'linear')]
    with pytest.raises(UserError, match='trained with beta_schedule=squaredcos_cap_v2'):
        check_trained_objective(path, now)


def test_an_objective_that_does_not_resolve_is_compared_by_name():
    theirs = objective_settings(dict(diffusion=dict(type='NotRegisteredDiffusion',
                                                    beta_schedule='linear')))
    assert theirs == dict(type='NotRegisteredDiffusion')
    assert objective_differences(theirs, dict(theirs)) == []


# ---------------------------------------------------------------------------
# 2. respace keeps a subclass's own arguments
# ---------------------------------------------------------------------------

class ShiftedDefault(GaussianDiffusion):
    def __init__(self, shift=1.0, **kw):
        super().__init__(**kw)
        self.shift = shift


class ShiftedRequired(GaussianDiffusion):
    def __init__(self, shift, **kw):
        super().__init__(**kw)
        self.shift = shift
        self.shift_table = shift * self.alphas_cumprod  # (of the respaced process)


class ShiftedFixed(GaussianDiffusion):
    """A constructor that does not pass timestep_respacing on."""

    def __init__(self, shift):
        super().__init__(num_timesteps=100, beta_schedule='squaredcos_cap_v2')
        self.shift = shift


def test_respace_keeps_a_subclass_default_argument():
    respaced = ShiftedDefault(shift=3.0, num_timesteps=100).respace('ddim10')
    assert type(respaced) is ShiftedDefault and respaced.shift == 3.0
    assert respaced.num_timesteps == 10 and respaced.original_num_steps == 100
    reference = GaussianDiffusion(num_timesteps=100, timestep_respacing='ddim10')
    assert (respaced.betas == reference.betas).all()


def test_respace_keeps_a_subclass_required_argument():
    diffusion = ShiftedRequired(2.0, num_timesteps=100, learn_sigma=False)
    respaced = diffusion.respace('10')
    assert respaced.shift == 2.0 and respaced.num_timesteps == 10
    assert respaced.shift_table.shape == (10, )  # its __init__ ran on the respaced one
    assert diffusion.num_timesteps == 100  # (the original is left as it was)
    torch.manual_seed(0)
    noise = torch.randn(2, 3, 4, 4)
    x = diffusion.sample(lambda x, t: torch.zeros_like(x), noise, {}, sampler='ddim',
                         num_steps=5)  # (a TypeError: missing 'shift')
    assert x.shape == noise.shape and torch.isfinite(x).all()


def test_respace_copies_a_subclass_that_fixes_its_base_arguments():
    respaced = ShiftedFixed(4.0).respace('ddim10')
    assert respaced.shift == 4.0 and respaced.num_timesteps == 10
    reference = GaussianDiffusion(num_timesteps=100, beta_schedule='squaredcos_cap_v2',
                                  timestep_respacing='ddim10')
    assert (respaced.betas == reference.betas).all()
    assert (respaced.timestep_map == reference.timestep_map).all()
