"""tools/test.py given tools/infer.py's sampling flags, or DiT's / SiT's sample_ddp.py
names of them: each is told the evaluation section's entry that sets it, with the value
given. Before: ``--num-sampling-steps 250`` was 'did you mean --num-samples' (250
samples instead of 250 steps), ``--sampler`` 'did you mean --sample-dir', and
``--cfg-scale``, ``--ckpt`` and SiT's SDE / ODE options had no hint."""
import os.path as osp
import re

import pytest

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.config_loading import load_config
from tests.cli_helpers import load_tool

SIT = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
FID = 'configs/_base_/evaluation/fid50k_imagenet256.py'


def _meant(capsys, argv):
    """The parser's one line for ``argv``: {flag: what it is told to give}."""
    with pytest.raises(SystemExit) as info:
        load_tool('test').parse_args(['run.py', *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    found = re.fullmatch(r'\S+: error: unrecognized arguments: [^(]*'
                         r'\(did you mean (.*)\?\); see (?:python )?\S+ --help', err)
    assert found, err
    return {part.rsplit(' for ', 1)[1]: part.rsplit(' for ', 1)[0]
            for part in found.group(1).split('; ')}


def test_sit_sample_ddp_flags_name_the_evaluation_entries(capsys):
    # SiT's sample_ddp.py SDE command for its FID-50K, as typed there
    meant = _meant(capsys, [
        '--ckpt', 'SiT-XL-2-256.pt', '--cfg-scale', '1.5', '--num-sampling-steps', '250',
        '--sampling-method', 'Euler', '--diffusion-form', 'sigma', '--last-step-size',
        '0.04', '--num-fid-samples', '50000', '--per-proc-batch-size', '32'])
    cfg = '--cfg-options evaluation.sample_cfg.'
    assert meant == {
        '--ckpt': 'the checkpoint as the argument after the config (tools/test.py CONFIG '
                  'SiT-XL-2-256.pt)',
        '--cfg-scale': f'{cfg}cfg_scale=1.5',
        '--num-sampling-steps': f'{cfg}num_steps=250',  # (was --num-samples)
        # (no mode word on the line: both modes' samplers; the placeholder was 'NAME')
        '--sampling-method': f'{cfg}sampler=sde_euler (SDE) or ode_euler (ODE)',
        '--diffusion-form': f'{cfg}diffusion_form=sigma',
        '--last-step-size': f'{cfg}last_step_size=0.04',
        '--num-fid-samples': '--num-samples', '--per-proc-batch-size': '--batch-size'}
    # tools/infer.py's own flags; no value: the placeholder; SiT's mode word
    meant = _meant(capsys, ['--sampler', 'sde_euler', '--steps=50', '--sampler-options',
                            'atol=1e-5', '--cfg_scale', '--labels', 'random'])
    assert meant == {
        '--sampler': f'{cfg}sampler=sde_euler',  # (was --sample-dir)
        '--steps': f'{cfg}num_steps=50',
        '--sampler-options': f'{cfg}atol=1e-5', '--cfg_scale': f'{cfg}cfg_scale=S',
        '--labels': '--cfg-options evaluation.labels=random (or a list of class ids, '
                    'evaluation.labels=[207,360])'}


def test_the_named_entries_set_what_the_evaluation_samples_with(repo_root):
    """The entries the hints name, given as --cfg-options after --evaluation, are the
    sampler settings tools/test.py samples a SiT model with."""
    tool = load_tool('test')
    from mmsora.utils.config_keys import check_sample_settings_of
    cfg = load_config(osp.join(repo_root, SIT))
    cfg.evaluation = load_config(osp.join(repo_root, FID)).evaluation
    apply_cfg_options(cfg, [
        'evaluation.sample_cfg.sampler=sde_euler', 'evaluation.sample_cfg.num_steps=100',
        'evaluation.sample_cfg.cfg_scale=1.5', 'evaluation.sample_cfg.diffusion_form=linear',
        'evaluation.sample_cfg.last_step_size=0.05', 'evaluation.labels=[207,360]'])
    settings = tool.evaluation_sample_cfg(cfg, cfg.evaluation)
    check_sample_settings_of(cfg.model, settings)
    assert (settings['sampler'], settings['num_steps'], settings['cfg_scale'],
            settings['diffusion_form'], settings['last_step_size']) == (
                'sde_euler', 100, 1.5, 'linear', 0.05)
    assert list(cfg.evaluation.labels) == [207, 360]


def test_sits_mode_word_is_no_checkpoint(repo_root, tmp_path, capsys, monkeypatch):
    """``tools/test.py CONFIG SDE`` (SiT's ``sample_ddp.py SDE``) took the word for the
    checkpoint: 'checkpoint file not found: SDE'."""
    from tests.cli_helpers import refused
    main = load_tool('test').main
    assert refused(main, [osp.join(repo_root, SIT), 'SDE', '--evaluation',
                          osp.join(repo_root, FID)]) == (
        "SDE is SiT's sampling mode, not a checkpoint: give the checkpoint after the config "
        '(tools/test.py CONFIG CKPT) and the sampler with --cfg-options '
        'evaluation.sample_cfg.sampler=sde_euler')
    assert refused(main, [osp.join(repo_root, SIT), 'ODE']).endswith(
        'evaluation.sample_cfg.sampler=ode_dopri5')
    # after the checkpoint, the word is an unknown argument, told the same entry
    assert _meant(capsys, ['ckpt.pt', 'SDE']) == {
        'SDE': '--cfg-options evaluation.sample_cfg.sampler=sde_euler'}
    # a file of that name is a checkpoint
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'SDE').write_bytes(b'')
    args = load_tool('test').parse_args(['run.py', 'SDE'])
    load_tool('test').check_args(args)
