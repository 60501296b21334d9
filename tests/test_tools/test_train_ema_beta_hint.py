"""Stable Cascade's --ema-beta BETA on tools/train.py: on a config whose custom_hooks
has an EMA hook, the refusal names that hook's momentum key with 1 - BETA worked out
exactly (0.9999: 0.0001), which mmengine's average takes as Stable Cascade's decay; a
BETA that is no decay is said to be one, in the same line; on a config without an
EMA hook the line names the key with its index to find, as before."""
import os.path as osp
import re

import pytest
import torch

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.config_loading import load_config
from tests.cli_helpers import train_args_refusal

SIT_XL = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
CASCADE_TOY = 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py'
CASCADE_LITE = 'configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py'
ABOUT = ("(the config's EMAHook: mmengine's momentum is 1 - beta, per update, and its "
         "interval is Stable Cascade's ema_iters, the steps between updates: --ema-iters)")
NO_HOOK = ("--cfg-options custom_hooks.I.momentum=1-beta (the EMAHook at index I of the "
           "config's custom_hooks, or in a config without one, dict(type='EMAHook', "
           "momentum=1-beta) added to its custom_hooks in the file: mmengine's momentum "
           "is 1 - decay, per update, and the hook's interval is Stable Cascade's ema_iters)")


def meant(err, flag='--ema-beta') -> str:
    """What the refusal says to give for ``flag`` (its part of the 'did you mean')."""
    parts = re.search(r'\(did you mean (.*)\?\)', err).group(1).split('; ')
    pattern = '--' + flag[2:].replace('-', '[-_]')
    return next(part.rpartition(' for ')[0] for part in parts
                if re.fullmatch(f'.* for {pattern}', part))


@pytest.mark.parametrize('config', [SIT_XL, CASCADE_TOY])
def test_the_key_and_value_are_said_and_average_as_stable_cascade(capsys, repo_root, config):
    said = meant(train_args_refusal(capsys, [osp.join(repo_root, config), '--ema-beta', '0.9999']))
    assert said == f'--cfg-options custom_hooks.0.momentum=0.0001 {ABOUT}'
    # the entry as said, on the config: its EMA hook gets the momentum
    cfg = load_config(osp.join(repo_root, config))
    apply_cfg_options(cfg, [said.split(' ')[1]])
    hook = cfg.custom_hooks[0]
    assert hook['type'] == 'EMAHook' and hook['momentum'] == 1e-4
    # mmengine's average with it moves as Stable Cascade's update_weights_ema with
    # beta 0.9999 (ema = beta * ema + (1 - beta) * weights: its lerp_ by 1 - beta)
    from mmengine.model import ExponentialMovingAverage
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = ExponentialMovingAverage(model, momentum=hook['momentum'])
    average.update_parameters(model)  # (its first: a copy, as Stable Cascade's EMA starts)
    theirs = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update_parameters(model)
        theirs = [0.9999 * e + (1 - 0.9999) * p.detach()
                  for e, p in zip(theirs, model.parameters())]
    for ours, expected in zip(average.module.parameters(), theirs):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('beta, momentum', [
    ('0.9999', '0.0001'), ('0.999', '0.001'), ('0.99995', '0.00005'), ('9.999e-1', '0.0001'),
    ('0.99990', '0.0001'), ('0.5', '0.5'), ('0.99999999', '0.00000001')])
def test_the_momentum_is_exact_as_written(capsys, repo_root, beta, momentum):
    """1 - 0.9999 in floats is 9.999999999998899e-05: the line says 0.0001."""
    config = osp.join(repo_root, CASCADE_TOY)
    for argv in ([config, '--ema-beta', beta], [config, f'--ema_beta={beta}'],
                 ['--ema-beta', beta, config]):  # (flag first: argparse took BETA for the config)
        said = meant(train_args_refusal(capsys, argv))
        assert said.split(' ')[1] == f'custom_hooks.0.momentum={momentum}', argv


@pytest.mark.parametrize('beta', ['abc', '1', '0', '1.5', '-0.5', 'nan', 'inf', '1e-5000',
                                  '1e-17'])  # (1e-17's momentum reads as 1.0 in a config)
@pytest.mark.parametrize('first', [False, True])
def test_a_beta_that_is_no_decay_is_said_in_one_line(capsys, repo_root, beta, first):
    config = osp.join(repo_root, CASCADE_TOY)
    err = train_args_refusal(capsys, ['--ema-beta', beta, config] if first else
                             [config, '--ema-beta', beta])
    assert (f"; --ema-beta is Stable Cascade's EMA decay, a number strictly between 0 and 1 "
            f'such as 0.9999, not {beta}: give --cfg-options custom_hooks.0.momentum=M '
            f'{ABOUT}; see ') in err, err
    assert 'did you mean' not in err


def test_without_a_value_the_key_has_a_placeholder(capsys, repo_root):
    said = meant(train_args_refusal(capsys, [osp.join(repo_root, CASCADE_TOY), '--ema-beta']))
    assert said == f'--cfg-options custom_hooks.0.momentum=M {ABOUT}'


def test_the_ema_hook_is_found_where_it_is_and_of_each_kind(capsys, tmp_path):
    """mmengine's own EMAHook, and the float32 one, at another index than 0."""
    for kind in ('mmengine.EMAHook', 'FP32EMAHook'):
        config = tmp_path / 'cfg.py'
        config.write_text(f"custom_hooks = [dict(type='RNGStateHook'), dict(type='{kind}', "
                          'momentum=1e-4)]\n')
        said = meant(train_args_refusal(capsys, [str(config), '--ema-beta', '0.9995']))
        assert said == '--cfg-options custom_hooks.1.momentum=0.0005 ' + ABOUT.replace(
            'EMAHook', kind.rpartition('.')[2])


@pytest.mark.parametrize('beta', ['0.9999', '1.5'])
def test_a_config_without_an_ema_hook_is_told_as_before(capsys, repo_root, beta):
    """Stable Cascade lite keeps no EMA (its custom_hooks is RNGStateHook alone)."""
    assert meant(train_args_refusal(capsys, [osp.join(repo_root, CASCADE_LITE), '--ema-beta',
                                  beta])) == NO_HOOK


def test_the_sample_hook_and_the_ema_hook_together(capsys, repo_root):
    err = train_args_refusal(capsys, [osp.join(repo_root, SIT_XL), '--sample-every', '5000',
                           '--ema-beta', '0.9999'])
    assert ('--cfg-options custom_hooks.2.interval=5000 (the config\'s SampleVisualizationHook'
            ': a second one would run beside it) for --sample-every') in err
    assert meant(err) == f'--cfg-options custom_hooks.0.momentum=0.0001 {ABOUT}'


@pytest.mark.parametrize('flag, key, value', [('--ema-iters', 'interval', '100'),
                                              ('--ema-start-iters', 'begin_iter', '5000')])
def test_stable_cascades_other_ema_settings_name_the_hooks_keys(capsys, repo_root, flag,
                                                                key, value):
    """Its finetune_c_1b.yaml averages every ema_iters (100) steps with ema_beta 0.9,
    copying the weights until ema_start_iters: the hook's interval and begin_iter."""
    config = osp.join(repo_root, CASCADE_TOY)
    said = meant(train_args_refusal(capsys, [config, flag, value]), flag)
    assert said.startswith(f"--cfg-options custom_hooks.0.{key}={value} (the config's "
                           'EMAHook: '), said
    cfg = load_config(config)
    apply_cfg_options(cfg, [said.split(' ')[1]])
    assert cfg.custom_hooks[0][key] == int(value)
    # without an EMA hook: the key with its index to find, or the hook to add
    said = meant(train_args_refusal(capsys, [osp.join(repo_root, CASCADE_LITE), flag, value]),
                 flag)
    letter = {'interval': 'K', 'begin_iter': 'N'}[key]
    assert said.startswith(f"--cfg-options custom_hooks.I.{key}={letter} (the EMAHook at "
                           "index I of the config's custom_hooks, or in a config without "
                           f"one, dict(type='EMAHook', {key}={letter}) added to its "
                           'custom_hooks in the file: '), said


def test_no_ema_update_interval_of_zero_is_said(capsys, repo_root):
    """mmengine's average divides by its interval: 0 stopped at its second update."""
    err = train_args_refusal(capsys, [osp.join(repo_root, CASCADE_TOY), '--ema-iters', '0'])
    assert ("--ema-iters is the steps between Stable Cascade's EMA updates, a whole number "
            'of 1 or more, not 0: give --cfg-options custom_hooks.0.interval=K') in err, err


def test_every_ema_iters_steps_averages_as_stable_cascade(capsys, repo_root):
    """ema_iters 3, ema_beta 0.9 (Stable Cascade: the average moves at steps 3, 6, ...):
    mmengine's average with the two keys said moves alike."""
    config = osp.join(repo_root, CASCADE_TOY)
    err = train_args_refusal(capsys, [config, '--ema-beta', '0.9', '--ema-iters', '3'])
    entries = [meant(err).split(' ')[1], meant(err, '--ema-iters').split(' ')[1]]
    assert entries == ['custom_hooks.0.momentum=0.1', 'custom_hooks.0.interval=3']
    cfg = load_config(config)
    apply_cfg_options(cfg, entries)
    hook = cfg.custom_hooks[0]
    from mmengine.model import ExponentialMovingAverage
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    average = ExponentialMovingAverage(model, momentum=hook['momentum'],
                                       interval=hook['interval'])
    theirs = None
    for step in range(8):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update_parameters(model)
        weights = [p.detach().clone() for p in model.parameters()]
        if theirs is None:  # (both start from a copy)
            theirs = weights
        elif step % 3 == 0:
            theirs = [0.9 * e + 0.1 * w for e, w in zip(theirs, weights)]
    for ours, expected in zip(average.module.parameters(), theirs):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)


def test_the_beta_is_read_where_the_config_went_to_fsdp(capsys, repo_root):
    """``--fsdp CONFIG --ema-beta 0.9``: argparse took 0.9 for the config (the line had
    the placeholder M)."""
    config = osp.join(repo_root, CASCADE_TOY)
    said = meant(train_args_refusal(capsys, ['--fsdp', config, '--ema-beta', '0.9']))
    assert said.split(' ')[1] == 'custom_hooks.0.momentum=0.1'


def test_a_bad_beta_after_a_good_one_is_said(capsys, repo_root):
    """Given twice, the second occurrence's own value (the first's was said for both)."""
    err = train_args_refusal(capsys, [osp.join(repo_root, CASCADE_TOY), '--ema-beta',
                                      '0.9999', '--ema-beta', '2'])
    assert 'custom_hooks.0.momentum=0.0001' in err and 'not 2: give' in err, err
