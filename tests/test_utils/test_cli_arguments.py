"""mmsora.utils.cli: the tools' argument types and the --cfg-options key check."""
import argparse
import importlib

import pytest
import torch

from mmsora.utils.cli import UserError, apply_cfg_options, device_setting, load_config


def test_device_setting(monkeypatch):
    assert device_setting('cpu') == 'cpu'
    with pytest.raises(argparse.ArgumentTypeError,
                       match="expected cpu, cuda or cuda:N, got 'nope'"):
        device_setting('nope')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(argparse.ArgumentTypeError, match='cuda: no cuda device on this machine'):
        device_setting('cuda')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert device_setting('cuda') == 'cuda' and device_setting('cuda:1') == 'cuda:1'
    with pytest.raises(argparse.ArgumentTypeError, match='has 2 CUDA device'):
        device_setting('cuda:2')


@pytest.mark.parametrize('tool, argv', [
    ('infer', ['work_dirs/run']), ('test', ['work_dirs/run']), ('text2video', ['story.txt']),
    ('extract_features', ['--data-path', 'images', '--out', 'store', '--vae', 'vae'])])
def test_tools_refuse_a_bad_device_as_a_usage_error(tool, argv, capsys):
    module = importlib.import_module(f'tools.{tool}')
    with pytest.raises(SystemExit) as info:
        module.parse_args([*argv, '--device', 'nope'])
    assert info.value.code == 2
    assert "argument --device: expected cpu, cuda or cuda:N, got 'nope'" in (
        capsys.readouterr().err)


def test_a_misspelt_top_level_key_is_refused(repo_root):
    """mmengine takes any new top-level key: ``trian_cfg.max_iters=4`` trained the
    config's 1500 iterations. A key two edits from the config's is refused."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    with pytest.raises(UserError, match="--cfg-options trian_cfg.max_iters: the config has "
                                        "no 'trian_cfg'; did you mean train_cfg"):
        apply_cfg_options(cfg, ['trian_cfg.max_iters=4'])
    with pytest.raises(UserError, match='did you mean randomness'):
        apply_cfg_options(cfg, ['randomnes.seed=1'])
    # new keys that are not near one of the config's are set as before
    apply_cfg_options(cfg, ['val_dataloader.batch_size=2', 'global_batch_size=8'])
    assert cfg.val_dataloader.batch_size == 2 and cfg.global_batch_size == 8
