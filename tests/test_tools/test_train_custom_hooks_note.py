"""A config's own custom_hooks list replaces its base's whole (mmengine merges dicts,
not lists): train.py says when the EMA or the RNG states went with it."""
import os.path as osp

import pytest

from tools.train import build_train_config, parse_args

pytestmark = pytest.mark.usefixtures('kept_environ', 'fresh_notes', 'malloc_calls')

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
SAMPLES = "dict(type='SampleVisualizationHook',interval=10,num_samples=1)"


def config_with_hooks(repo_root, tmp_path, hooks):
    child = tmp_path / 'child.py'
    child.write_text(f"_base_ = ['{osp.join(repo_root, DEMO)}']\ncustom_hooks = {hooks}\n")
    argv = [str(child), '--work-dir', str(tmp_path / 'work')]
    return build_train_config(parse_args(argv))


def test_a_replaced_list_is_said(repo_root, tmp_path, capsys):
    config_with_hooks(repo_root, tmp_path, f'[{SAMPLES}]')
    err = capsys.readouterr().err
    assert ('note: custom_hooks has no EMAHook (no EMA weights: checkpoints hold the '
            'trained weights, which infer samples) and no RNGStateHook (a --resume draws '
            "other noise than the run would have); a config's custom_hooks list replaces "
            "its base's whole: list them too if they were meant "
            '(configs/_base_/default_runtime.py)') in err
    # one of them gone: that one named
    config_with_hooks(repo_root, tmp_path, f"[dict(type='EMAHook'), {SAMPLES}]")
    err = capsys.readouterr().err
    assert 'note: custom_hooks has no RNGStateHook (' in err and 'EMAHook' not in err


def test_the_demo_and_a_list_that_keeps_them_are_silent(repo_root, tmp_path, capsys):
    config_with_hooks(repo_root, tmp_path, "[dict(type='EMAHook', momentum=0.01), "
                      f"dict(type='RNGStateHook'), {SAMPLES}]")
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'demo')]
    build_train_config(parse_args(argv))
    assert 'custom_hooks has' not in capsys.readouterr().err
