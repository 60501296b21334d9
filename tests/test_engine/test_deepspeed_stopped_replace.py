"""A DeepSpeed save stopped between the two renames that replace a checkpoint folder
(``deepspeed_save.put_in_place`` where the file system cannot exchange two folders):
``iter_4.pth`` missing, the new checkpoint whole at ``.iter_4.saving.pth``, the old one
at ``.iter_4.old.pth``. What the errors about the missing checkpoint say of them, and
what the next save of ``iter_4.pth`` itself does with them."""
import errno
import os
import os.path as osp

import pytest
from mmengine.runner import Runner

from mmsora.engine.atomic_checkpoint import CheckpointWriteError
from mmsora.engine.strategies.deepspeed_save import remove_leftovers
from mmsora.utils.checkpoint_choice import resolve_checkpoint, saved_checkpoint
from tests.test_engine.test_deepspeed_staged_save import make_folder, read_folder
from tests.tiny_models import tiny_cfg

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')

NEW, OLD = '.iter_4.saving.pth', '.iter_4.old.pth'


def stopped_between_the_renames(work, left=(NEW, OLD), named='iter_4.pth'):
    """``work`` as a kill between the two renames of a save of iter_4.pth leaves it
    (``left``: what of the two is there), ``last_checkpoint`` naming ``named``."""
    os.makedirs(work)
    make_folder(work / 'iter_2.pth', {'a': 'iter 2'})
    for name in left:
        make_folder(work / name, {'a': 'new' if name == NEW else 'old'})
    (work / 'last_checkpoint').write_text(str(work / named))


def test_resume_names_the_new_checkpoint_and_the_old_one(tmp_path):
    work = tmp_path / 'w'
    stopped_between_the_renames(work)
    with pytest.raises(FileNotFoundError) as info:
        saved_checkpoint(str(work))
    target = work / 'iter_4.pth'
    assert str(info.value) == (
        f'{work}/last_checkpoint names {target}, which does not exist; a save was '
        f'stopped while it replaced it: the one it replaced, whole, is {work}/{OLD}: '
        f'rename it back (mv {work}/{OLD} {target})')


def test_a_work_dir_given_for_its_checkpoint_says_how_to_put_it_back(tmp_path):
    """(--load-from W): its advice was followed by 'give the checkpoint file'."""
    work = tmp_path / 'w'
    stopped_between_the_renames(work)
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(str(work))
    assert str(info.value).endswith(f'(mv {work}/{OLD} {work}/iter_4.pth)')


@pytest.mark.parametrize('left, said', [
    ((OLD,), '; a save was stopped while it replaced it: the one it replaced, whole, is '
             '{w}/.iter_4.old.pth: rename it back (mv {w}/.iter_4.old.pth {w}/iter_4.pth)'),
    ((NEW,), '; {w}/.iter_4.saving.pth is a save of it that was stopped before it took '
             'its place, perhaps while it wrote: not a checkpoint to take'),
    ((), '')])
def test_a_missing_checkpoint_names_what_its_stopped_save_left(tmp_path, left, said):
    """The old checkpoint alone (the new one removed after a put-back that failed),
    the staging folder alone (a first save of iter_4.pth stopped before its rename,
    maybe while it wrote: not called whole), nothing."""
    work = tmp_path / 'w'
    stopped_between_the_renames(work, left)
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(str(work / 'iter_4.pth'))
    assert str(info.value) == f'checkpoint not found: {work}/iter_4.pth' + said.format(w=work)


def test_train_resume_says_how_to_put_the_checkpoint_back(repo_root, tmp_path, capfd, runs):
    from tests.test_engine.test_scalars_full_disk import train_cli
    work = tmp_path / 'w'
    stopped_between_the_renames(work)
    assert train_cli(repo_root, work, 'default_hooks.checkpoint.interval=2',
                     '--resume') == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if ln.startswith('error')]
    assert f'a save was stopped while it replaced it: the one it replaced, whole, ' \
           f'is {work}/{OLD}' in line, line
    assert f'(mv {work}/{OLD} {work}/iter_4.pth)' in line, line


@pytest.mark.parametrize('left', [(NEW, OLD), (OLD,)])
def test_a_save_of_the_same_checkpoint_puts_the_old_one_back_first(tmp_path, left):
    """The save writes its staging folder anew, with the old one aside: killed while it
    wrote, it left a part of a checkpoint there beside the old one, to be taken for a
    whole new one (and a save that put that in place removed the old, the one whole
    copy)."""
    work = tmp_path / 'w'
    stopped_between_the_renames(work, left)
    remove_leftovers(str(work / 'iter_4.pth'))
    assert read_folder(work / 'iter_4.pth') == {'a': 'old'}
    assert sorted(os.listdir(work)) == ['iter_2.pth', 'iter_4.pth', 'last_checkpoint']


def test_a_refused_put_back_leaves_the_old_one_aside(tmp_path, monkeypatch):
    """The rename back refused (a work dir not writable): the old checkpoint stays aside,
    whole; nothing of it is removed."""
    work = tmp_path / 'w'
    stopped_between_the_renames(work)
    real_rename = os.rename

    def refused(src, dst, *args, **kwargs):
        if osp.basename(str(src)) == OLD:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(src))
        return real_rename(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, 'rename', refused)
    remove_leftovers(str(work / 'iter_4.pth'))
    assert read_folder(work / OLD) == {'a': 'old'}
    assert not osp.lexists(work / 'iter_4.pth')


def test_a_failed_save_leaves_the_old_checkpoint_it_put_back(repo_root, tmp_path,
                                                                monkeypatch):
    """The hook removes a folder its failed save made (a partial one): iter_4.pth, not
    there as the save began, was taken for one and removed. (``last_checkpoint`` names
    another: the one it names is never removed.)"""
    def save_fails(self, out_dir, filename, *args, **kwargs):
        remove_leftovers(osp.join(out_dir, filename))  # (fail_together's first step)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), osp.join(out_dir, filename))

    work = tmp_path / 'w'
    stopped_between_the_renames(work, named='iter_2.pth')
    monkeypatch.setattr(Runner, 'save_checkpoint', save_fails)
    runner = Runner.from_cfg(tiny_cfg(repo_root, work, 4,
                                      'default_hooks.checkpoint.interval=4'))
    with pytest.raises(CheckpointWriteError) as info:
        runner.train()
    assert info.value.left is None
    assert read_folder(work / 'iter_4.pth') == {'a': 'old'}


def test_the_checkpoint_named_itself_says_how_to_put_it_back(tmp_path):
    """W/iter_4.pth given by name: --resume, a checkpoint read (tools/infer.py W and
    --checkpoint), tools/infer.py W/iter_4.pth: each said 'not found' alone."""
    from mmsora.apis.inference import find_run
    from mmsora.utils.checkpoint import load_checkpoint_file
    from mmsora.utils.cli import UserError
    from tests.cli_helpers import load_tool
    from tests.conftest import REPO_ROOT
    work = tmp_path / 'w'
    stopped_between_the_renames(work)
    target = work / 'iter_4.pth'
    put_back = f'(mv {work}/{OLD} {target})'
    train = load_tool('train')
    demo = osp.join(REPO_ROOT, 'configs', 'dit', 'dit_tiny2_1xb32_1500_shapes16.py')
    with pytest.raises(UserError) as info:
        train.build_train_config(train.parse_args([demo, '--resume', str(target)]))
    assert str(info.value).startswith(f'--resume checkpoint not found: {target}; a save')
    assert str(info.value).endswith(put_back)
    with pytest.raises(FileNotFoundError) as info:
        load_checkpoint_file(str(target))
    assert str(info.value).endswith(put_back)
    with pytest.raises(FileNotFoundError) as info:
        find_run(str(target))
    assert str(info.value).startswith(f'no such config file or work dir: {target}; a save')
    assert str(info.value).endswith(put_back)


def test_a_work_dir_with_a_staging_folder_alone_still_says_to_give_the_file(tmp_path):
    """Nothing to put back: the line keeps its ': give the checkpoint file'."""
    work = tmp_path / 'w'
    stopped_between_the_renames(work, (NEW,))
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint(str(work))
    assert 'not a checkpoint to take' in str(info.value)
    assert str(info.value).endswith(': give the checkpoint file')
