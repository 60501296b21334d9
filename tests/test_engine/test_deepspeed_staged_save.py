"""The pieces of a DeepSpeed checkpoint save (mmsora/engine/strategies/deepspeed_save.py):
the staging folder that replaces an old checkpoint only whole, the leftovers of killed
saves, and the writes of DeepSpeed's save that are kept, not raised, so that every
process still meets the others at its barriers."""
import errno
import os
import os.path as osp
import shutil
import threading

import pytest

from mmsora.engine.strategies import deepspeed_save
from mmsora.engine.strategies.deepspeed_save import (_KeptWrites, aside_name, put_in_place,
                                                     remove_leftovers, staging_name)


def make_folder(path, files: dict) -> str:
    os.makedirs(path)
    for name, text in files.items():
        with open(osp.join(path, name), 'w') as f:
            f.write(text)
    return str(path)


def read_folder(path) -> dict:
    out = {}
    for name in os.listdir(path):
        with open(osp.join(path, name)) as f:
            out[name] = f.read()
    return out


def test_the_staging_folder_is_hidden_beside_the_checkpoint(tmp_path):
    target = str(tmp_path / 'iter_4.pth')
    assert staging_name(target) == str(tmp_path / '.iter_4.saving.pth')
    assert aside_name(target) == str(tmp_path / '.iter_4.old.pth')


def test_linux_exchanges_two_folders_in_one_step(tmp_path):
    a = make_folder(tmp_path / 'a', {'x': 'a'})
    b = make_folder(tmp_path / 'b', {'y': 'b'})
    assert deepspeed_save._exchange(a, b)
    assert read_folder(a) == {'y': 'b'} and read_folder(b) == {'x': 'a'}


@pytest.mark.parametrize('exchange', [True, False])
def test_a_new_checkpoint_replaces_the_old_folder_whole(tmp_path, monkeypatch, exchange):
    """The old parts are not kept beside the new ones (a part the new save does not
    write, here ``b``, went on lying in the folder written in place)."""
    if not exchange:  # (NFS, other systems: two renames)
        monkeypatch.setattr(deepspeed_save, '_exchange', lambda a, b: False)
    target = make_folder(tmp_path / 'iter_4.pth', {'a': 'old', 'b': 'old'})
    staging = make_folder(staging_name(target), {'a': 'new', 'c': 'new'})
    put_in_place(staging, target)
    assert read_folder(target) == {'a': 'new', 'c': 'new'}
    assert sorted(os.listdir(tmp_path)) == ['iter_4.pth']


def test_a_new_checkpoint_takes_a_free_place(tmp_path):
    target = str(tmp_path / 'iter_2.pth')
    put_in_place(make_folder(staging_name(target), {'a': 'new'}), target)
    assert read_folder(target) == {'a': 'new'}
    assert sorted(os.listdir(tmp_path)) == ['iter_2.pth']


def test_a_failed_flush_after_the_rename_is_not_a_failed_save(tmp_path, monkeypatch):
    """The new checkpoint in place, the folder's flush failing (EIO) was raised as the
    save's failure: the new folder was then removed as a partial one."""
    target, staging = tmp_path / 'iter_4.pth', tmp_path / '.iter_4.saving.pth'
    make_folder(staging, {'a': 'new'})

    def fail(path):
        raise OSError(errno.EIO, os.strerror(errno.EIO), path)
    monkeypatch.setattr(deepspeed_save, 'fsync_dir', fail)
    monkeypatch.setattr(deepspeed_save, '_sync_tree', lambda path: None)
    put_in_place(str(staging), str(target))
    assert read_folder(target) == {'a': 'new'} and not osp.exists(staging)


def test_mmengines_file_replaces_the_old_one(tmp_path):
    """Without the optimizer state mmengine writes one file (process 0's), staged the
    same way."""
    target = tmp_path / 'iter_4.pth'
    target.write_text('old')
    staging = staging_name(str(target))
    with open(staging, 'w') as f:
        f.write('new')
    put_in_place(staging, str(target))
    assert target.read_text() == 'new'
    assert sorted(os.listdir(tmp_path)) == ['iter_4.pth']


def test_a_new_folder_that_cannot_take_the_place_leaves_the_old_one(tmp_path,
                                                                     monkeypatch):
    """Two renames: where the second fails, the old checkpoint is put back."""
    monkeypatch.setattr(deepspeed_save, '_exchange', lambda a, b: False)
    target = make_folder(tmp_path / 'iter_4.pth', {'a': 'old'})
    staging = make_folder(staging_name(target), {'a': 'new'})
    rename = os.rename

    def failing_rename(src, dst):
        if src == staging:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), src)
        rename(src, dst)

    monkeypatch.setattr(os, 'rename', failing_rename)
    with pytest.raises(OSError) as info:
        put_in_place(staging, target)
    assert info.value.errno == errno.EACCES
    assert read_folder(target) == {'a': 'old'}
    assert not osp.exists(aside_name(target))


def test_leftovers_of_killed_saves_are_removed_before_a_save(tmp_path):
    """What killed saves left is removed, except the old and the new checkpoint left
    between two renames where the checkpoint itself is missing; other hidden files
    are not touched."""
    for name in ('iter_2.pth', 'iter_4.pth'):
        make_folder(tmp_path / name, {'a': 'whole'})
    (tmp_path / '.notes.old').mkdir()  # (not a checkpoint's)
    leftovers = {'.iter_2.saving.pth': 'gone',  # killed while writing over iter_2
                 '.iter_2.old.pth': 'gone',  # killed before the old was removed
                 '.iter_6.saving.pth': 'gone',  # killed while writing a new iter_6
                 '.iter_8.saving.pth': 'kept',  # killed between the two renames:
                 '.iter_8.old.pth': 'kept',  # iter_8.pth is missing
                 '.iter_4.saving.pth': 'gone'}  # the folder this save writes anew
    for name in leftovers:
        make_folder(tmp_path / name, {'a': 'part'})
    remove_leftovers(str(tmp_path / 'iter_4.pth'))
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['iter_2.pth', 'iter_4.pth', '.notes.old'] +
        [name for name, fate in leftovers.items() if fate == 'kept'])


def test_a_save_of_a_name_of_ones_own_removes_its_own_leftovers(tmp_path, monkeypatch):
    """A filename_tmpl of one's own ('ckpt_{}.pth'): the killed save's staging folder,
    with its other processes' parts, was written into again and put in place mixed
    (and its aside kept for ever); a bare name ('ckpt_4.pth' in the working folder)
    missed its own staging folder too."""
    make_folder(tmp_path / 'ckpt_4.pth', {'a': 'whole'})
    make_folder(tmp_path / '.ckpt_4.saving.pth', {'zero_pp_rank_7': 'part'})
    make_folder(tmp_path / '.ckpt_4.old.pth', {'a': 'old'})
    remove_leftovers(str(tmp_path / 'ckpt_4.pth'))
    assert sorted(os.listdir(tmp_path)) == ['ckpt_4.pth']
    make_folder(tmp_path / '.ckpt_6.saving.pth', {'zero_pp_rank_7': 'part'})
    monkeypatch.chdir(tmp_path)
    remove_leftovers('ckpt_6.pth')
    assert sorted(os.listdir(tmp_path)) == ['ckpt_4.pth']


# -------------------------------------------------------------------------------------
# DeepSpeed's writes, kept
# -------------------------------------------------------------------------------------

class Writer:
    """A checkpoint engine as DeepSpeed's TorchCheckpointEngine: ``makedirs`` is its
    base class's (os.makedirs), ``save`` writes a file, ``commit`` says it is done."""

    def __init__(self):
        self.done = []

    def makedirs(self, path, exist_ok=False):
        os.makedirs(path, exist_ok=exist_ok)

    def save(self, state, path):
        with open(path, 'w') as f:
            f.write(state)
        self.done.append(('save', osp.basename(path)))

    def commit(self, info):
        self.done.append(('commit', info))
        return True


class Engine:
    def __init__(self):
        self.checkpoint_engine = Writer()

    def _copy_recovery_script(self, save_path):
        shutil.copyfile(__file__, osp.join(save_path, 'zero_to_fp32.py'))


def deepspeed_like_save(engine, save_dir, tag, offload_dir):
    """The writes of DeepSpeed's ``engine.save_checkpoint``, in its order."""
    writer = engine.checkpoint_engine
    writer.makedirs(save_dir, exist_ok=True)  # (process 0, before the first barrier)
    folder = osp.join(save_dir, tag)
    writer.makedirs(folder, exist_ok=True)
    writer.save('model', osp.join(folder, 'mp_rank_00_model_states.pt'))
    writer.save('optim', osp.join(folder, 'zero_pp_rank_0_optim_states.pt'))
    engine._copy_recovery_script(folder)
    from shutil import copytree  # (as DeepSpeed imports it, in the function)
    copytree(offload_dir, osp.join(folder, 'offloaded_tensors', 'rank0'))
    writer.commit(tag)


def failing(what):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), what)
    return fail


@pytest.mark.parametrize('which', ['save_dir', 'commit', 'copytree'])
def test_every_write_of_deepspeeds_save_is_kept(tmp_path, monkeypatch, which):
    """Process 0's ``makedirs`` of ``save_dir`` (before DeepSpeed's first barrier), the
    checkpoint engine's ``commit`` and the NVMe offload's ``copytree`` failed out of the
    save too: the other processes waited at DeepSpeed's barrier for 30 minutes."""
    engine = Engine()
    offload = make_folder(tmp_path / 'swap', {'state.swp': 'x'})
    save_dir = str(tmp_path / 'w')
    if which == 'save_dir':  # (a file where the folder goes: a real failed makedirs)
        (tmp_path / 'w').write_text('')
    elif which == 'commit':
        engine.checkpoint_engine.commit = failing('commit')
    else:
        monkeypatch.setattr(shutil, 'copytree', failing('copytree'))
    failures = []
    with _KeptWrites(engine, failures):
        deepspeed_like_save(engine, save_dir, 'iter_2.pth', offload)
    assert len(failures) == 1 and isinstance(failures[0], OSError)
    done = engine.checkpoint_engine.done
    if which == 'save_dir':  # (nothing after the failed write)
        assert done == []
    else:
        assert done == [('save', 'mp_rank_00_model_states.pt'),
                        ('save', 'zero_pp_rank_0_optim_states.pt')]


def test_the_kept_writes_are_given_back(tmp_path):
    engine = Engine()
    writer, copytree = engine.checkpoint_engine, shutil.copytree
    with _KeptWrites(engine, []):
        pass
    assert vars(writer) == {'done': []} and '_copy_recovery_script' not in vars(engine)
    assert shutil.copytree is copytree


def test_another_threads_copytree_is_not_kept(tmp_path):
    """``shutil.copytree`` is the module's, for every thread: only the saving thread's
    failure is the save's."""
    engine = Engine()
    raised, failures = [], []

    def copy_elsewhere():
        try:
            shutil.copytree(str(tmp_path / 'missing'), str(tmp_path / 'copy'))
        except OSError as e:
            raised.append(e)

    with _KeptWrites(engine, failures):
        thread = threading.Thread(target=copy_elsewhere)
        thread.start()
        thread.join()
    assert len(raised) == 1 and failures == []
