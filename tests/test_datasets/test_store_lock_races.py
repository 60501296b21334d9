"""The store lock (StoreLock) between two runs at the instant one makes it, a failed
write of it, the folders made for it; the hint for a store's shards without its index."""
import errno
import json
import os
import threading
import time
from unittest import mock

import numpy as np
import pytest

from mmsora.datasets import LatentStore
from mmsora.datasets import store_lock as ls
from mmsora.datasets.store_folder import _what_is_there
from mmsora.datasets.store_lock import LOCK_NAME, StoreLock, StoreLockedError

pytestmark = pytest.mark.usefixtures('fresh_notes')


def on_first_lock_open(path, action):
    """A patch of ``os.open``: the first ``O_EXCL`` open of ``path`` makes the file as
    usual, then runs ``action(fd)`` (another run meanwhile), whose return is the fd the
    caller gets."""
    real_open, state = os.open, {'done': False}

    def patched(name, flags, *args, **kwargs):
        fd = real_open(name, flags, *args, **kwargs)
        if not state['done'] and flags & os.O_EXCL and os.fspath(name) == path:
            state['done'] = True
            return action(fd)
        return fd
    return mock.patch.object(os, 'open', patched)


def test_an_empty_lock_being_written_is_not_taken_over(tmp_path):
    """Run B read run A's lock between A making it and A writing its pid: empty, it was
    taken over at once, and both runs held the lock (both wrote every shard)."""
    root = str(tmp_path / 'store')
    a, b = StoreLock(root), StoreLock(root)
    told, said = [], []

    def run_b():
        try:
            b.acquire(on_stale=told.append)
            said.append('held')
        except StoreLockedError as e:
            said.append(str(e))

    def a_is_slow_to_write(fd):  # (B starts, and finds the lock empty meanwhile)
        thread = threading.Thread(target=run_b)
        thread.start()
        time.sleep(0.3)
        run_b.thread = thread
        return fd
    with on_first_lock_open(a.path, a_is_slow_to_write):
        a.acquire()
    run_b.thread.join()
    assert told == [] and b.text is None
    assert said == [f'{root} is being written by another run (pid {os.getpid()}, since '
                    f'{json.loads(a.text)["since"]}): let it finish (or stop it), then '
                    'rerun to go on; each shard is written once']
    assert open(a.path).read() == a.text
    a.release()  # (its lock goes, and the folder it made)
    assert not os.path.exists(root)


def test_an_empty_lock_is_stale_only_once_old(tmp_path, monkeypatch, capsys):
    """A run stopped between making its lock and writing it (a crash in that instant)
    leaves it empty: taken over once it is older than a few seconds, with its note."""
    monkeypatch.setattr(ls, 'EMPTY_LOCK_STALE_S', 0.5)
    root = tmp_path / 'store'
    root.mkdir()
    (root / LOCK_NAME).write_text('')
    begun = time.monotonic()
    lock = StoreLock(str(root))
    assert lock.take() is None  # (waited for it to be 0.5 s old)
    assert time.monotonic() - begun >= 0.4
    assert (f'note: {root}: taking over the lock of a run that stopped (its lock is '
            'unreadable): its finished shards are kept') in capsys.readouterr().err
    assert json.loads((root / LOCK_NAME).read_text())['pid'] == os.getpid()
    lock.release()
    # one made an hour ago: at once
    (root / LOCK_NAME).write_text('')
    os.utime(root / LOCK_NAME, (time.time() - 3600,) * 2)
    begun = time.monotonic()
    assert lock.take() is None and time.monotonic() - begun < 0.4
    lock.release()
    # one that stays new (its mtime ahead of this clock): refused once waited for
    (root / LOCK_NAME).write_text('')
    os.utime(root / LOCK_NAME, (time.time() + 3600,) * 2)
    assert lock.take() == (
        f'--out {root} is being written by another run (its lock {root}/{LOCK_NAME} is new '
        f'and empty: made 0 s ago, no pid written yet): rerun in a moment, or remove '
        f'{root}/{LOCK_NAME} if no run is writing there')
    assert (root / LOCK_NAME).read_text() == ''


def read_only_twin(fd):
    """A read-only fd of the file ``fd`` is open on (writes into it fail: EBADF), in
    place of ``fd``."""
    twin = os.open(f'/proc/self/fd/{fd}', os.O_RDONLY)
    os.close(fd)
    return twin


def test_a_failed_write_of_the_lock_removes_only_this_runs(tmp_path, monkeypatch):
    """A run whose write of its lock failed removed whatever lock was there: another
    run's that had taken it over meanwhile; and where none was, its FileNotFoundError
    hid the write's error."""
    root = str(tmp_path / 'store')
    a, c = StoreLock(root), StoreLock(root)

    def c_takes_it_over(fd):  # (as a stale empty lock: old at once here)
        monkeypatch.setattr(ls, 'EMPTY_LOCK_STALE_S', 0)
        c.acquire()
        return read_only_twin(fd)
    with on_first_lock_open(a.path, c_takes_it_over), pytest.raises(OSError) as info:
        a.acquire()
    assert info.value.errno == errno.EBADF and a.text is None
    assert open(c.path).read() == c.text  # (C's, kept)
    c.release()

    def gone_meanwhile(fd):  # (taken over and released by another run)
        os.remove(a.path)
        return read_only_twin(fd)
    with on_first_lock_open(a.path, gone_meanwhile), pytest.raises(OSError) as info:
        a.acquire()
    assert info.value.errno == errno.EBADF  # (the write's error, not FileNotFoundError)
    # its own lock, whose write failed (a full disk): removed, the folder with it
    a = StoreLock(root)
    os.rmdir(root)
    with on_first_lock_open(a.path, read_only_twin), pytest.raises(OSError) as info:
        a.acquire()
    assert info.value.errno == errno.EBADF and os.listdir(root) == []
    a.release()
    assert not os.path.exists(root)


def test_the_parents_made_are_removed_when_the_folder_was_not_made(tmp_path, monkeypatch):
    """os.makedirs stopped after making a parent (no room, a permission): the release
    stopped at the missing folder and left the parent it had made."""
    root = tmp_path / 'new' / 'deeper' / 'store'
    real_makedirs = os.makedirs

    def stops_after_the_first(name, *args, **kwargs):
        real_makedirs(tmp_path / 'new')
        raise PermissionError(errno.EACCES, 'Permission denied', str(name))
    monkeypatch.setattr(os, 'makedirs', stops_after_the_first)
    lock = StoreLock(str(root))
    assert lock.take() == f'--out {root}: [Errno 13] Permission denied: {str(root)!r}'
    monkeypatch.undo()
    lock.release()
    assert os.listdir(tmp_path) == []


def test_a_stores_shards_without_its_index_are_named_so(tmp_path):
    """A store copied without index.json and parts/ was taken for fast-DiT's per-file
    features (read them with NpyLatentDataset, or convert them)."""
    root = tmp_path / 'store'
    root.mkdir()
    for name in ('shard_00000.npy', 'labels_00000.npy', 'shard_00001.npy'):
        np.save(root / name, np.zeros(2))
    hint = (": it holds a latent store's shards (labels_00000.npy, shard_00000.npy, ...) "
            'without its index: copy the whole store folder (index.json and parts/ too), '
            'or rerun the extraction into it (it encodes every shard again: a writer '
            'trusts only shards an index lists)')
    assert _what_is_there(str(root)) == hint
    with pytest.raises(FileNotFoundError) as info:
        LatentStore(str(root))
    assert str(info.value) == f"no latent store index {str(root / 'index.json')!r}{hint}"
