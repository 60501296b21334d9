"""tools/train.py's checks of a launch of several processes, made before the Runner
starts: torchrun without --launcher, a --resume on another process count (a
checkpoint file's run layout, a DeepSpeed folder's) and --load-from with --deepspeed.
The launch's environment (WORLD_SIZE, RANK, LOCAL_RANK) is set in this process."""
import os.path as osp

import pytest
import torch

from mmsora.engine.resume_checks import check_resume_layout
from mmsora.utils.cli import LAUNCHER_GRACE_S, UserError, run_cli
from tests.tiny_models import DEMO, TINY_TRAIN
from tools import train


@pytest.fixture
def launch(monkeypatch):
    """Set the environment torchrun gives process ``rank`` of ``world`` (one machine);
    parse_args sets LOCAL_RANK, set here so that it is put back."""
    def set_env(world=1, rank=0):
        for key, value in dict(WORLD_SIZE=world, LOCAL_WORLD_SIZE=world, RANK=rank,
                               LOCAL_RANK=rank).items():
            monkeypatch.setenv(key, str(value))
    set_env()
    return set_env


def build(repo_root, work, *args, options=()):
    return train.build_train_config(train.parse_args(
        [osp.join(repo_root, DEMO), '--work-dir', str(work), *args, '--cfg-options',
         *TINY_TRAIN, *options]))


# --------------------------------------------------------------------------- #
#                       torchrun without --launcher                           #
# --------------------------------------------------------------------------- #
def test_torchrun_without_launcher_is_refused_before_the_config(repo_root, tmp_path, launch,
                                                                monkeypatch, capsys):
    """Each process trained the whole run alone into the same work dir (the same
    losses, both wrote iter_N.pth, two log folders), and the launch exited 0."""
    def not_reached(args):
        raise AssertionError('the config was built')
    monkeypatch.setattr(train, 'build_train_config', not_reached)
    slept = []
    monkeypatch.setattr('time.sleep', slept.append)
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'w')]
    launch(world=2, rank=0)
    with pytest.raises(UserError, match=r'^started as one of 2 torchrun processes without '
                                        r'--launcher: add --launcher pytorch'):
        train.main(argv)
    assert run_cli(lambda: train.main(argv)) == 2
    assert slept == []  # the machine's first process says it at once
    assert 'without --launcher' in capsys.readouterr().err
    launch(world=2, rank=1)  # the others wait for the launcher to stop them (run_cli)
    assert run_cli(lambda: train.main(argv)) == 2
    assert slept == [LAUNCHER_GRACE_S]
    assert not (tmp_path / 'w').exists()


# --------------------------------------------------------------------------- #
#                         DeepSpeed on another count                          #
# --------------------------------------------------------------------------- #
def test_deepspeed_resume_on_another_count_names_the_way_deepspeed_takes(repo_root, tmp_path,
                                                                         launch):
    """The refusal said '--load-from FILE', which --deepspeed refuses in turn."""
    pytest.importorskip('deepspeed')  # the preset builds DeepSpeed's config
    folder = tmp_path / 'run' / 'iter_8.pth'
    folder.mkdir(parents=True)
    for name in ('mp_rank_00_model_states.pt', 'bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt',
                 'bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt'):
        (folder / name).write_bytes(b'')
    with pytest.raises(UserError) as info:
        build(repo_root, tmp_path / 'w', '--resume', str(folder), '--deepspeed',
              'deepspeed_zero2')
    assert str(info.value).endswith(
        'start a new run from its weights (tools/zero_to_state_dict.py, then --cfg-options '
        'model.pretrained_denoiser=FILE with --deepspeed, or --load-from FILE without it)')


def run_checkpoint(repo_root, path, **layout):
    """A checkpoint of the tiny demo's run (its initial weights), saved at iteration 2
    by a run of ``layout`` (``meta.run_layout``, as ResumeCheckHook saves it)."""
    from mmsora.registry import MODELS
    # (building the config registers the models: train checks them on the meta device)
    cfg = build(repo_root, osp.join(osp.dirname(path), 'source'))
    state_dict = MODELS.build(cfg.model).state_dict()
    run_layout = dict(world_size=1, batch_size=8, dataset_size=64, accumulation=1)
    run_layout.update(layout)
    torch.save(dict(state_dict=state_dict, meta=dict(iter=2, run_layout=run_layout)), path)
    return str(path)


def test_load_from_with_deepspeed_is_refused_before_its_note(repo_root, tmp_path, launch,
                                                             capsys):
    """The note said the run starts from the weights, and the next line refused it."""
    pytest.importorskip('deepspeed')
    ckpt = run_checkpoint(repo_root, tmp_path / 'iter_2.pth')
    capsys.readouterr()
    with pytest.raises(UserError, match=r'with --deepspeed: mmengine loads only DeepSpeed '
                                        'checkpoint folders there'):
        build(repo_root, tmp_path / 'w', '--load-from', ckpt, '--deepspeed', 'deepspeed_zero2')
    assert 'the model starts from' not in capsys.readouterr().err
    build(repo_root, tmp_path / 'w', '--load-from', ckpt)  # without it: said
    assert (f'--load-from {ckpt}: the model starts from its weights (iteration 2)'
            in capsys.readouterr().err)


# --------------------------------------------------------------------------- #
#                   --resume of a file on another layout                      #
# --------------------------------------------------------------------------- #
def test_resume_on_another_count_is_refused_before_the_runner(repo_root, tmp_path, launch):
    """ResumeCheckHook refused it after the Runner's start-up (~250 lines, and a log
    folder per attempt)."""
    ckpt = run_checkpoint(repo_root, tmp_path / 'two.pth', world_size=2, batch_size=4)
    work = tmp_path / 'w'

    def main(*args, options=()):
        train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), '--resume', ckpt,
                    *args, '--cfg-options', *TINY_TRAIN, *options])
    # the same global batch of 8 on 1 process: still not the run's data order
    with pytest.raises(UserError) as info:
        main()
    assert str(info.value) == (
        'cannot resume: the checkpoint was saved by a run of 2 processes x batch size 4 '
        '(global 8), this run has 1 process x batch size 8 (global 8); exact resume needs '
        'the same layout (the global batch is the same, but the data order and the '
        'per-process RNG states the checkpoint holds belong to 2 processes): relaunch with '
        f'it, or go on from its weights with --load-from {ckpt} and another --work-dir (its '
        'trained weights and EMA; the optimizer state and the data order start afresh, and '
        'the learning-rate schedule restarts from iteration 0)')
    assert not work.exists()  # no log folder, no dumped config
    # the process count from the launch: 2 torchrun processes
    launch(world=2, rank=0)
    with pytest.raises(UserError, match=r'this run has 2 processes x batch size 8 \(global '
                                        r'16\); exact resume needs the same layout: relaunch'):
        main('--launcher', 'pytorch')
    assert not work.exists()
    cfg = build(repo_root, work, '--resume', ckpt, '--launcher', 'pytorch',
                options=['train_dataloader.batch_size=4'])
    check_resume_layout(cfg, 2)  # the run's layout: it resumes
    launch(world=1, rank=0)
    # micro-batches per step count as the hook counts them
    with pytest.raises(UserError, match=r'this run has 1 process x batch size 4 x 2 '
                                        r'micro-batches per step \(global 8\); exact resume '
                                        r'needs the same layout \(the global batch is the '
                                        r'same, but'):
        main(options=['train_dataloader.batch_size=4', 'optim_wrapper.accumulative_counts=2'])
    # the hook turned off: not checked (its own choice)
    check_resume_layout(build(repo_root, work, '--resume', ckpt,
                              options=['default_hooks.resume_check=None']), 1)
