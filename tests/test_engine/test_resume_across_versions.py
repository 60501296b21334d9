"""Resuming a run saved by an older mmsora or under another config: no warning about
a message hub key older checkpoints list, checkpoints record the mmsora that wrote
them, and a resume says what changed since the checkpoint's run."""
import os.path as osp
import re

import pytest
import torch
from mmengine.runner import Runner

import mmsora
from mmsora.utils.checkpoint import load_checkpoint_file
from tests.tiny_models import DEMO, tiny_cfg
from tests.tiny_models import TINY_TRAIN as TINY
from tools.train import build_train_config, parse_args

SIT = 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py'


@pytest.fixture(scope='module')
def root():
    return osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, root):
    """A 2-iteration tiny DiT run's checkpoint."""
    work = tmp_path_factory.mktemp('src')
    Runner.from_cfg(tiny_cfg(root, work, 2)).train()
    return str(work / 'iter_2.pth')


def resume_argv(root, config, work_dir, ckpt, *extra):
    return [osp.join(root, config), '--work-dir', str(work_dir), '--resume', ckpt,
            '--cfg-options', 'train_cfg.max_iters=3', *TINY, *extra]


def test_checkpoint_records_the_mmsora_that_wrote_it(trained):
    meta = load_checkpoint_file(trained)['meta']
    assert meta['mmsora_version'] == mmsora.__version__
    commit = meta['mmsora_commit']
    assert commit is None or re.fullmatch('[0-9a-f]{40}', commit)


def test_resume_of_a_checkpoint_listing_accumulative_counts_does_not_warn(
        root, tmp_path, trained, capfd):
    # A checkpoint saved before the hook dropped the key from the hub's resumed keys.
    old = load_checkpoint_file(trained)
    old['message_hub']['resumed_keys']['accumulative_counts'] = False
    path = str(tmp_path / 'old.pth')
    torch.save(dict(old), path)
    capfd.readouterr()
    runner = Runner.from_cfg(tiny_cfg(root, tmp_path / 'run', 3, resume=path))
    runner.train()
    out, err = capfd.readouterr()
    assert runner.iter == 3
    assert 'accumulative_counts is not defined' not in out + err
    log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
    assert 'accumulative_counts is not defined' not in log
    assert runner.message_hub.get_info('accumulative_counts') == 1


def test_resume_notes_config_changes(root, tmp_path, trained, capsys):
    # The config as edited since the run: a hook added, another guidance scale.
    config = tmp_path / 'changed.py'
    config.write_text(
        f'_base_ = [{osp.join(root, DEMO)!r}]\n'
        "sample_cfg = dict(cfg_scale=7.0)\n"
        "custom_hooks = [\n"
        "    dict(type='EMAHook', momentum=0.01, update_buffers=True, "
        "priority='ABOVE_NORMAL'),\n"
        "    dict(type='RNGStateHook'),\n"
        "    dict(type='GradClipFromHook', begin=100, max_norm=0.1),\n"
        "]\n")
    capsys.readouterr()
    build_train_config(parse_args(resume_argv(root, str(config), tmp_path / 'w', trained)))
    notes = [line for line in capsys.readouterr().err.splitlines() if 'changed since' in line]
    assert notes == [
        f"note: --resume {trained}: custom_hooks changed since the checkpoint: the "
        "checkpoint's run had [EMAHook, RNGStateHook]; this run has [EMAHook, "
        "RNGStateHook, GradClipFromHook]",
        f"note: --resume {trained}: sample_cfg changed since the checkpoint: the "
        "checkpoint's run had cfg_scale=2.0; this run has cfg_scale=7.0"]


def test_resume_notes_a_precision_change(root, tmp_path, trained, capsys):
    # (the checkpoint's run trained in fp32; --amp switched it without a word)
    capsys.readouterr()
    build_train_config(parse_args(['--amp', *resume_argv(root, DEMO, tmp_path, trained)]))
    notes = [line for line in capsys.readouterr().err.splitlines() if 'changed since' in line]
    assert notes == [
        f"note: --resume {trained}: optim_wrapper.type changed since the checkpoint: the "
        "checkpoint's run had 'OptimWrapper'; this run has 'AutocastOptimWrapper'",
        f"note: --resume {trained}: optim_wrapper.dtype changed since the checkpoint: the "
        "checkpoint's run had None; this run has 'bfloat16'"]


def test_resume_with_the_same_config_notes_nothing(root, tmp_path, trained, capsys):
    capsys.readouterr()
    build_train_config(parse_args(resume_argv(root, DEMO, tmp_path, trained)))
    assert 'changed since' not in capsys.readouterr().err


def test_transport_resume_of_an_unversioned_checkpoint_notes_the_losses(
        root, tmp_path, capsys):
    work = tmp_path / 'sit'
    argv = [osp.join(root, SIT), '--work-dir', str(work), '--cfg-options',
            'train_cfg.max_iters=1', *TINY]
    Runner.from_cfg(build_train_config(parse_args(argv))).train()
    ckpt = load_checkpoint_file(str(work / 'iter_1.pth'))
    capsys.readouterr()
    build_train_config(parse_args(resume_argv(root, SIT, tmp_path / 'a',
                                              str(work / 'iter_1.pth'))))
    assert 'will not match' not in capsys.readouterr().err  # (it records its version)
    del ckpt['meta']['mmsora_version']
    old = str(tmp_path / 'old.pth')
    torch.save(dict(ckpt), old)
    build_train_config(parse_args(resume_argv(root, SIT, tmp_path / 'b', old)))
    notes = [line for line in capsys.readouterr().err.splitlines() if 'will not match' in line]
    assert len(notes) == 1
    assert notes[0].startswith(f'note: --resume {old}: saved by an older mmsora')
    assert 'losses after the resume will not match an uninterrupted run' in notes[0]
