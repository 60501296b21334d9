"""tools/train.py and a work dir that already holds a run: a new run there (a forgotten
--resume) is refused before the Runner starts, a refused --resume leaves the earlier
run's dumped config, and a --resume of a complete run leaves no log folder."""
import os
import os.path as osp
import shutil
import time

import pytest

from mmsora.engine.work_dir import check_work_dir_is_new, drop_log_dir_left_empty
from mmsora.utils.cli import UserError, run_cli
from tests.tiny_models import DEMO
from tests.tiny_models import TINY_TRAIN as TINY
from tools import train

CONFIG_NAME = osp.basename(DEMO)  # the config the Runner dumps into the work dir


def main(repo_root, work, *args, iters=2, name='run', options=()):
    """tools/train.py's main in this process: the tiny demo, a checkpoint every 2
    iterations, a visualizer and logger of its own (``name``)."""
    train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), *args, '--cfg-options',
                *TINY, f'train_cfg.max_iters={iters}', 'default_hooks.checkpoint.interval=2',
                f'experiment_name={name}-{work.parent.name}', *options])


def contents(work):
    """Every file under ``work`` with its bytes."""
    found = {}
    for folder, _, files in os.walk(work):
        for f in files:
            path = osp.join(folder, f)
            with open(path, 'rb') as fh:
                found[osp.relpath(path, work)] = fh.read()
    return found


def test_a_new_run_into_a_work_dir_with_checkpoints_is_refused(repo_root, tmp_path, capsys,
                                                                malloc_calls):
    """A forgotten --resume started at iteration 0 without a word and overwrote the
    earlier run's iter_N.pth and last_checkpoint (max_keep_ckpts pruned the rest)."""
    work = tmp_path / 'w'
    main(repo_root, work, iters=4)
    assert (work / 'iter_4.pth').is_file()
    before = contents(work)
    capsys.readouterr()
    assert run_cli(lambda: main(repo_root, work, iters=4, name='again')) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert lines == [
        f'error: --work-dir {work} holds the checkpoints of an earlier run (newest: '
        f'{work}/iter_4.pth, iteration 4), which a new run there would overwrite from '
        'iteration 0: continue that run with --resume, start the new one in another '
        f'--work-dir, or remove them to start over (rm {work}/last_checkpoint '
        f'{work}/iter_2.pth {work}/iter_4.pth)'], err[-3000:]
    assert 'Traceback' not in err
    assert contents(work) == before  # nothing written: no log folder, no config dumped
    # --load-from starts at 0 and overwrites the same way
    weights = tmp_path / 'weights.pth'
    shutil.copy(work / 'iter_2.pth', weights)
    with pytest.raises(UserError, match=rf'^--load-from {weights} into --work-dir {work}: '
                                        r'it holds the checkpoints of an earlier run '
                                        rf'\(newest: {work}/iter_4.pth, iteration 4\)'):
        main(repo_root, work, '--load-from', str(weights), name='load')
    assert contents(work) == before
    # --load-from a checkpoint of that very folder: removing the checkpoints (as said
    # above) would remove the weights it starts from; another work dir is the way
    with pytest.raises(UserError, match=rf'^--load-from {work}/iter_2.pth into --work-dir '
                                        rf'{work}: it holds the checkpoints of an earlier run '
                                        r'.*, the file given among them: start the new run in '
                                        r'another --work-dir \(or continue that run with '
                                        r'--resume\)$'):
        main(repo_root, work, '--load-from', str(work / 'iter_2.pth'), name='own')
    # a file of another name beside them is not in the list to remove (a glob took
    # tools/zero_to_state_dict.py's iter_N_state_dict.pth along)
    (work / 'iter_4_state_dict.pth').write_bytes(b'weights')
    with pytest.raises(UserError, match=r'\(rm \S+/last_checkpoint \S+/iter_2.pth '
                                        r'\S+/iter_4.pth\)$'):
        main(repo_root, work, name='again')
    os.remove(work / 'iter_4_state_dict.pth')
    # what the message says to do: --resume ...
    main(repo_root, work, '--resume', iters=6, name='resume')
    assert (work / 'iter_6.pth').is_file()
    # ... or remove the checkpoints: the dumped config and logs alone are no run to keep
    for name in os.listdir(work):
        if name == 'last_checkpoint' or name.startswith('iter_'):
            os.remove(work / name)
    main(repo_root, work, name='over')
    assert (work / 'iter_2.pth').is_file()


@pytest.mark.parametrize('layout, newest', [
    # numbered files without last_checkpoint (copied alone): the highest
    (dict(files=['iter_2.pth', 'iter_10.pth']), 'iter_10.pth, iteration 10'),
    # last_checkpoint names the work dir's own file
    (dict(files=['iter_4.pth', 'iter_8.pth'], last='iter_4.pth'), 'iter_4.pth, iteration 4'),
    # a DeepSpeed checkpoint folder (rm -r)
    (dict(zero=['iter_6.pth']), 'iter_6.pth, iteration 6'),
    # an epoch-based run
    (dict(files=['epoch_3.pth']), 'epoch_3.pth, epoch 3'),
])
def test_checkpoints_of_every_kind_are_found(repo_root, tmp_path, layout, newest):
    work = tmp_path / 'w'
    work.mkdir()
    for name in layout.get('files', []):
        (work / name).write_bytes(b'')
    for name in layout.get('zero', []):
        (work / name).mkdir()
        for f in ('mp_rank_00_model_states.pt', 'bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt'):
            (work / name / f).write_bytes(b'')
    if 'last' in layout:
        (work / 'last_checkpoint').write_text(str(work / layout['last']))
    args = train.parse_args([osp.join(repo_root, DEMO), '--work-dir', str(work)])
    cfg = train.build_train_config(args)
    with pytest.raises(UserError, match=r'earlier run \(newest: (.*)\), which') as caught:
        check_work_dir_is_new(cfg, args)
    assert str(caught.value).split('(newest: ')[1].startswith(f'{work}/{newest})')
    remove = str(caught.value).rsplit('(', 1)[1]
    assert remove.startswith(f'rm -r {work}/' if 'zero' in layout else f'rm {work}/')


def test_a_work_dir_without_checkpoints_is_taken(repo_root, tmp_path):
    """Logs and a dumped config alone (a run stopped before its first checkpoint), a
    last_checkpoint naming another work dir's file (a copy without its checkpoints),
    or one naming a file gone, and --resume / resume=True, are not refused."""
    work = tmp_path / 'w'
    (work / '20261205_091500' / 'vis_data').mkdir(parents=True)
    (work / '20261205_091500' / '20261205_091500.log').write_text('start-up\n')
    (work / CONFIG_NAME).write_text('x = 1\n')
    elsewhere = tmp_path / 'iter_4.pth'
    elsewhere.write_bytes(b'')

    def check(*argv):
        args = train.parse_args([osp.join(repo_root, DEMO), '--work-dir', str(work), *argv])
        check_work_dir_is_new(train.build_train_config(args), args)
    check()
    (work / 'last_checkpoint').write_text(str(elsewhere))
    check()
    (work / 'last_checkpoint').write_text(str(work / 'gone.pth'))
    check()
    (work / 'iter_4.pth').write_bytes(b'')
    with pytest.raises(UserError, match='holds the checkpoints of an earlier run'):
        check()
    check('--cfg-options', 'resume=True')  # mmengine's own auto-resume
    # checkpoints saved under the checkpoint hook's out_dir (OUT_DIR/WORK_DIR_NAME, as
    # mmengine lays them out) were not looked for
    os.remove(work / 'iter_4.pth')
    out = tmp_path / 'ckpts'
    (out / 'w').mkdir(parents=True)
    (out / 'w' / 'iter_6.pth').write_bytes(b'')
    with pytest.raises(UserError, match=rf'^--work-dir {work} \(its checkpoints: {out}/w\) '
                                        rf'holds the checkpoints of an earlier run \(newest: '
                                        rf'{out}/w/iter_6.pth, iteration 6\).*\(rm '
                                        rf'{out}/w/iter_6.pth\)$'):
        check('--cfg-options', f'default_hooks.checkpoint.out_dir={out}')


def test_a_refused_resume_keeps_the_dumped_config(repo_root, tmp_path, malloc_calls):
    """A --resume refused once the Runner has started (a checkpoint of another layout:
    ResumeCheckHook) had already dumped its own config over the earlier run's
    (WORK_DIR/CONFIG_NAME.py, which tools/infer.py WORK_DIR reads)."""
    work = tmp_path / 'w'
    main(repo_root, work)
    dumped = work / CONFIG_NAME
    earlier = dumped.read_bytes()
    refused = dict(iters=4, options=['train_dataloader.batch_size=4'])
    with pytest.raises(UserError, match=r'^cannot resume: the checkpoint was saved by a run '
                                        r'of 1 process x batch size 8'):
        main(repo_root, work, '--resume', name='layout', **refused)
    assert dumped.read_bytes() == earlier
    # where there was none, the refused run's is not left (infer takes a work dir's
    # one config)
    dumped.unlink()
    with pytest.raises(UserError, match=r'^cannot resume'):
        main(repo_root, work, '--resume', name='layout-again', **refused)
    assert not list(work.glob('*.py'))
    # a resume that goes on dumps its own config, as before
    main(repo_root, work, '--resume', iters=4, name='resumed')
    assert 'max_iters=4' in dumped.read_text() and (work / 'iter_4.pth').is_file()


def test_a_resume_of_a_complete_run_leaves_no_log_folder(repo_root, tmp_path, capsys,
                                                         malloc_calls):
    """Nothing to train, and each such --resume left one more WORK_DIR/TIMESTAMP
    folder of start-up output. One holding what the hooks' ends made stays."""
    import logging
    from types import SimpleNamespace
    work = tmp_path / 'w'
    main(repo_root, work)
    before = sorted(os.listdir(work))
    time.sleep(1.1)  # a log folder of its own (TIMESTAMP: to the second)
    capsys.readouterr()
    main(repo_root, work, '--resume', name='complete')
    assert 'the run is complete and there is nothing to train' in capsys.readouterr().out
    assert sorted(os.listdir(work)) == before
    # a final evaluation's scalars (or samples) are kept with the log that names them
    kept = tmp_path / 'kept' / '20261205_091500'
    (kept / 'vis_data').mkdir(parents=True)
    for name in ('20261205_091500.log', 'vis_data/config.py', 'vis_data/scalars.json'):
        (kept / name).write_text('{}\n')
    runner = SimpleNamespace(log_dir=str(kept), logger=logging.getLogger('kept'))
    drop_log_dir_left_empty(runner, existed=set())
    assert (kept / 'vis_data' / 'scalars.json').is_file()
    (kept / 'vis_data' / 'scalars.json').unlink()
    drop_log_dir_left_empty(runner, existed={kept.name})  # there before: stays
    assert kept.is_dir()
    drop_log_dir_left_empty(runner, existed=set())
    assert not kept.exists()
