"""SiT's train.py --sample-every N on tools/train.py: on a config that has a
SampleVisualizationHook already (the SiT-XL/2 config's), the refusal names that hook's
interval key, which --cfg-options takes (adding a hook, as it said before, made a
second one sampling beside it); on a config without one it says to add the hook."""
import os.path as osp
import re

import pytest

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.config_loading import load_config
from tests.cli_helpers import train_args_refusal

SIT_XL = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
DIT_XL = 'configs/dit/dit_xl2_8xb32_400k_imagenet256.py'
ADD_A_HOOK = ("dict(type='SampleVisualizationHook', interval=N) in the config's "
              "custom_hooks (README: Samples during training)")


def meant(err) -> str:
    """What the refusal says to give for --sample-every."""
    return re.search(r'did you mean (.*) for --sample[-_]every\?\)', err).group(1)


def sample_hooks(cfg) -> list:
    return [h for h in cfg.custom_hooks if h['type'] == 'SampleVisualizationHook']


@pytest.mark.parametrize('flag', [['--sample-every', '5000'], ['--sample-every=5000'],
                                  ['--sample_every', '5000']])
def test_a_config_with_a_sample_hook_is_told_its_interval_key(capsys, repo_root, flag):
    config = osp.join(repo_root, SIT_XL)
    said = meant(train_args_refusal(capsys, [config, *flag]))
    assert said == ("--cfg-options custom_hooks.2.interval=5000 (the config's "
                    'SampleVisualizationHook: a second one would run beside it)')
    # the key said, given as said: the config's one sample hook, every 5000 steps
    cfg = load_config(config)
    apply_cfg_options(cfg, [said.split(' ')[1]])
    assert [h['interval'] for h in sample_hooks(cfg)] == [5000]
    assert len(cfg.custom_hooks) == 3


def test_the_key_works_through_tools_train(repo_root, tmp_path):
    """The key through tools/train.py's own config building (the one the Runner gets)."""
    from tools.train import build_train_config, parse_args
    cfg = build_train_config(parse_args([
        osp.join(repo_root, SIT_XL), '--work-dir', str(tmp_path / 'run'),
        '--cfg-options', 'custom_hooks.2.interval=5000']))
    assert [h['interval'] for h in sample_hooks(cfg)] == [5000]


def test_without_a_value_the_key_has_a_placeholder(capsys, repo_root):
    said = meant(train_args_refusal(capsys, [osp.join(repo_root, SIT_XL), '--sample-every']))
    assert said.startswith('--cfg-options custom_hooks.2.interval=N (')


def test_a_config_without_a_sample_hook_is_told_to_add_one(capsys, repo_root):
    assert meant(train_args_refusal(capsys, [osp.join(repo_root, DIT_XL), '--sample-every',
                                  '5000'])) == ADD_A_HOOK
    # a config that is not there: the same (the config's own error comes once the flag
    # is mended), in one line
    assert meant(train_args_refusal(capsys, [str(osp.join(repo_root, 'no_such.py')),
                                  '--sample-every', '5000'])) == ADD_A_HOOK


def test_the_work_dirs_dumped_config_is_told_the_same(capsys, repo_root, tmp_path):
    """--resume's config, read from the work dir (the dump keeps the hook's place)."""
    dumped = str(tmp_path / 'sit_xl2_8xb32_400k_imagenet256.py')
    load_config(osp.join(repo_root, SIT_XL)).dump(dumped)
    said = meant(train_args_refusal(capsys, [dumped, '--resume', '--sample-every', '20000']))
    assert said.startswith('--cfg-options custom_hooks.2.interval=20000 (')


@pytest.mark.parametrize('order', ['flag first', 'fsdp config'])
def test_the_config_is_found_where_the_flag_comes_first(capsys, repo_root, order):
    """``--sample-every 5000 CONFIG`` (argparse took 5000 for the config) and ``--fsdp
    CONFIG --sample-every 5000`` (the config as --fsdp's value) were told to add a second
    hook; the key is said, with the number given (it was N in both: the word after the
    flag was the config, or none)."""
    config = osp.join(repo_root, SIT_XL)
    argv = (['--sample-every', '5000', config] if order == 'flag first'
            else ['--fsdp', config, '--sample-every', '5000'])
    said = meant(train_args_refusal(capsys, argv))
    assert said.startswith('--cfg-options custom_hooks.2.interval=')
    assert said.split(' ')[1].rpartition('=')[2] == '5000'


@pytest.mark.parametrize('values, said', [(['100', '200'], ['100', '200']),
                                          (['abc', '7'], ['N', '7']),
                                          (['7', 'abc'], ['7', 'N']),
                                          (['²', '7'], ['N', '7'])])
def test_each_occurrence_of_the_flag_says_its_own_value(capsys, repo_root, values, said):
    """Given twice, each hint says its own value (the command line's first was said for
    both); a value that is no whole number of 0-9 digits is N ('²' passes str.isdigit)."""
    argv = [osp.join(repo_root, SIT_XL)]
    for value in values:
        argv += ['--sample-every', value]
    err = train_args_refusal(capsys, argv)
    found = re.findall(r'custom_hooks\.2\.interval=(\S+) \(', err)
    assert found == said, err
