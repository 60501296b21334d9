"""The EMA weights of a short run, still mostly their initial ones by the run's own record
(its EMA's updates and momentum), are warned about where they are taken to sample: with
DiT's momentum 1e-4 they were noise after a thousand iterations, without a word."""
import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from mmsora.apis import init_model, load_weights
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_cfg


def warning(path, share, updates, settings='momentum 0.01', option='use_ema=False'):
    """The line, naming ``option`` (the Python API's; tools/infer.py's --no-ema)."""
    return (f'warning: the EMA weights of {path} still hold {share} of their initial '
            f'weights after {updates} updates ({settings}): {option} samples the trained '
            'weights; or train longer')


def warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith('warning: ')]


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
    """The shrunk demo trained 3 iterations (its EMAHook: momentum 0.01, every step):
    (work dir, its checkpoint, the checkpoint as read)."""
    work = tmp_path_factory.mktemp('short_ema_run')
    Runner.from_cfg(tiny_cfg(REPO_ROOT, work, 3)).train()
    path = str(work / 'iter_3.pth')
    return work, path, torch.load(path, weights_only=False)


def saved(obj, path):
    torch.save(obj, path)
    return str(path)


def test_a_short_runs_ema_weights_are_warned_about(short_run, capsys):
    """3 updates: the first copies the weights, the 2 after move 1% of the way each,
    so 0.99 ** 2 = 98% of the initial weights are left (not 0.99 ** 3 = 97%)."""
    work, path, obj = short_run
    assert int(obj['ema_state_dict']['steps']) == 3  # (mmengine's count)
    model, _ = init_model(str(work))  # the work dir: its newest checkpoint, EMA
    assert (model.loaded_from, model.loaded_weights) == (path, 'EMA weights')
    assert warnings(capsys) == [warning(path, '98%', 3)]
    init_model(str(work), use_ema=False)  # --no-ema: the trained weights, nothing to say
    assert warnings(capsys) == []
    # a caller with no way to the trained weights names none
    init_model(str(work), trained_option=None)
    assert warnings(capsys) == [warning(path, '98%', 3).replace(
        'use_ema=False samples the trained weights; or train longer', 'train longer')]


def test_tools_infer_says_it_and_its_no_ema_option_takes_the_trained_weights(
        short_run, tmp_path, capsys):
    from tools.infer import main as infer
    work, path, _ = short_run
    argv = [str(work), '--num-samples', '1', '--steps', '2', '--out']
    infer([*argv, str(tmp_path / 'ema.png')])
    assert warnings(capsys) == [warning(path, '98%', 3, option='--no-ema')]
    infer([*argv, str(tmp_path / 'trained.png'), '--no-ema'])
    assert warnings(capsys) == []


def test_an_ema_that_has_moved_is_not_warned_about(short_run, tmp_path, capsys):
    """The same run had it gone on: after 69 updates 0.99 ** 68 = 50.5% is left
    (warned), after 70 0.99 ** 69 = 49.98% (not)."""
    work, _, obj = short_run
    for steps, said in ((69, True), (70, False), (1500, False)):
        ema = dict(obj['ema_state_dict'], steps=torch.tensor(steps))
        path = saved(dict(obj, ema_state_dict=ema), tmp_path / f'iter_{steps}.pth')
        init_model(str(work), checkpoint=path)
        assert warnings(capsys) == ([warning(path, '50%', 69)] if said else [])


def test_the_ema_interval_is_counted(tmp_path, capsys):
    """An EMA that moves every 2nd update (interval=2): after 5 updates it has moved
    twice, 0.8 ** 2 = 64% left (0.8 ** 4 = 41% if every update moved it)."""
    work = tmp_path / 'interval_run'
    Runner.from_cfg(tiny_cfg(REPO_ROOT, work, 5, 'custom_hooks.0.momentum=0.2',
                             'custom_hooks.0.interval=2')).train()
    init_model(str(work))
    assert warnings(capsys) == [warning(work / 'iter_5.pth', '64%', 5,
                                        'momentum 0.2, interval 2')]


def test_a_deepspeed_folder_is_asked_for_its_ema_updates(short_run, tmp_path, capsys):
    """A DeepSpeed folder read for its EMA alone comes without ema_state_dict: its
    client state holds the count."""
    work, _, obj = short_run
    folder = tmp_path / 'iter_3.pth'
    folder.mkdir()
    client = {'state_dict': obj['state_dict'], 'ema_state_dict': obj['ema_state_dict'],
              'meta': {'cfg': obj['meta']['cfg'], 'iter': 3}}
    saved(client, folder / 'mp_rank_00_model_states.pt')
    init_model(str(work), checkpoint=str(folder))
    assert warnings(capsys) == [warning(folder, '98%', 3)]


def untold_checkpoints(obj) -> dict:
    """Files a short run's checkpoint ``obj`` becomes that do not tell how young its EMA
    is (by name): the warning's tests of each tool take them."""
    denoiser = {k[len('denoiser.'):]: v for k, v in obj['state_dict'].items()
                if k.startswith('denoiser.')}
    trained = {k[len('module.denoiser.'):]: v for k, v in obj['ema_state_dict'].items()
               if k.startswith('module.denoiser.')}
    cfg = obj['meta']['cfg']
    assert "type='EMAHook'" in cfg
    return {
        # a DiT / fast-DiT training file, a released (plain) state dict
        'dit.pt': {'model': trained, 'ema': denoiser},
        'plain.pt': denoiser,
        # a run whose config is not recorded, or whose EMA count is not
        'no_cfg.pth': dict(obj, meta={'iter': 3}),
        'no_steps.pth': dict(obj, ema_state_dict={
            k: v for k, v in obj['ema_state_dict'].items() if k != 'steps'}),
        # an average whose momentum changes with the count: not judged
        'annealed.pth': dict(obj, meta=dict(obj['meta'], cfg=cfg.replace(
            "type='EMAHook'", "ema_type='MomentumAnnealingEMA', type='EMAHook'"))),
    }


def test_no_warning_where_the_checkpoint_does_not_tell(short_run, tmp_path, capsys):
    work, _, obj = short_run
    untold = untold_checkpoints(obj)
    for name, content in untold.items():
        model, _ = init_model(str(work), checkpoint=saved(content, tmp_path / name))
        assert warnings(capsys) == [], name
    # the checkpoint as it is warns: each case above took away what it is told by
    load_weights(model, saved(obj, tmp_path / 'iter_3.pth'))
    assert len(warnings(capsys)) == 1
    assert osp.basename(model.loaded_from) == 'iter_3.pth'


def test_a_hook_of_the_runs_own_modules_is_passed_over(short_run, tmp_path, capsys):
    """A run config's custom hook from its own modules (not imported here) before the
    EMA hook: the EMA hook is still found."""
    work, _, obj = short_run
    cfg = obj['meta']['cfg'].replace('custom_hooks = [', "custom_hooks = [\n"
                                     "    dict(type='MyOwnHookNotHere'),", 1)
    assert 'MyOwnHookNotHere' in cfg
    path = saved(dict(obj, meta=dict(obj['meta'], cfg=cfg)), tmp_path / 'iter_3.pth')
    init_model(str(work), checkpoint=path)
    assert warnings(capsys) == [warning(path, '98%', 3)]


def test_a_fine_tunes_ema_is_not_warned_about(short_run, tmp_path, capsys):
    """A run started from trained weights (--load-from DiT-XL-2-256x256.pt, or
    model.pretrained_denoiser) or whose EMA began late (begin_iter): the average's
    first weights were not random ones, and a young EMA of a fine-tune samples well.
    It was warned about as 'still hold 98% of their initial weights'."""
    work, _, obj = short_run
    text = obj['meta']['cfg']
    for n, more in enumerate(("load_from = 'DiT-XL-2-256x256.pt'",
                              "model = dict(pretrained_denoiser='DiT-XL-2-256x256.pt')",
                              'custom_hooks = [dict(type="EMAHook", momentum=0.01, '
                              'begin_iter=2)]')):
        meta = dict(obj['meta'], cfg=f'{text}\n{more}\n')
        path = saved(dict(obj, meta=meta), tmp_path / f'iter_{n}.pth')
        init_model(str(work), checkpoint=path)
        assert warnings(capsys) == [], more
