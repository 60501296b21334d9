"""Crash-safe writes (mmsora.utils.atomic_io): a file lands whole or not at all."""
import errno
import os
import stat

import numpy as np
import pytest

from mmsora.utils.atomic_io import (atomic_file, atomic_path, atomic_write_bytes, fsync_dir,
                                    host_tag, tmp_name, tmp_target)


def test_the_file_lands_only_when_the_block_ends(tmp_path):
    target = tmp_path / 'a.bin'
    with atomic_file(target) as f:
        f.write(b'12')
        assert not target.exists()
        assert os.listdir(tmp_path) == [f'.a.tmp-{os.getpid()}-{host_tag()}.bin']
    assert target.read_bytes() == b'12'
    assert os.listdir(tmp_path) == ['a.bin']


def test_an_error_leaves_the_target_and_no_temporary_file(tmp_path):
    target = tmp_path / 'a.txt'
    target.write_text('old')
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target, 'w', encoding='utf-8') as f:
            f.write('new, half written')
            raise KeyboardInterrupt
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            with open(tmp, 'w') as f:
                f.write('new')
            raise ValueError('the library failed')
    assert target.read_text() == 'old'
    assert os.listdir(tmp_path) == ['a.txt']


def test_an_existing_target_is_replaced_whole(tmp_path):
    target = tmp_path / 'stats.npz'
    atomic_write_bytes(target, b'x' * 10_000)
    with atomic_path(target) as tmp:
        assert tmp.endswith('.npz')  # np.savez appends .npz to a name without it
        np.savez(tmp, mu=np.arange(3))
    with np.load(target) as data:
        np.testing.assert_array_equal(data['mu'], np.arange(3))
    atomic_write_bytes(target, b'short')
    assert target.read_bytes() == b'short'
    assert os.listdir(tmp_path) == ['stats.npz']


def test_a_missing_folder_is_made(tmp_path):
    atomic_write_bytes(str(tmp_path / 'new' / 'sub' / 'f'), b'1')
    assert (tmp_path / 'new' / 'sub' / 'f').read_bytes() == b'1'


def fsync_refused_for_folders(code):
    """An ``os.fsync`` that fails on folders with ``code`` (files sync as usual)."""
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(code, os.strerror(code))
        real(fd)
    return fsync


def test_a_folder_fsync_not_supported_does_not_fail_the_write(tmp_path, monkeypatch):
    monkeypatch.setattr(os, 'fsync', fsync_refused_for_folders(errno.EINVAL))
    atomic_write_bytes(tmp_path / 'f', b'data')  # (as on some network / FUSE mounts)
    assert (tmp_path / 'f').read_bytes() == b'data'

    def refused(fd):
        raise OSError(errno.EINVAL, 'Invalid argument')
    monkeypatch.setattr(os, 'fsync', refused)
    fsync_dir(str(tmp_path))


def test_a_failing_disk_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(os, 'fsync', fsync_refused_for_folders(errno.EIO))
    with pytest.raises(OSError, match='Input/output'):
        fsync_dir(str(tmp_path))

    def disk_full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(OSError, match='No space left'):
        atomic_write_bytes(tmp_path / 'g', b'data')
    assert not (tmp_path / 'g').exists()
    assert os.listdir(tmp_path) == []


def test_temporary_names_are_read_back():
    name = tmp_name('/run/iter_4.pth')
    assert name == f'/run/.iter_4.tmp-{os.getpid()}-{host_tag()}.pth'
    assert tmp_target(name) == ('iter_4.pth', os.getpid())
    assert tmp_target('.last_checkpoint.tmp-12') == ('last_checkpoint', 12)
    assert tmp_target('.iter_4.pth.tmp-12') == ('iter_4.pth', 12)  # (checkpoints before)
    for other in ('iter_4.pth', 'shard_00002.npy.tmp.12', '.hidden', '.a.tmp-x.npz'):
        assert tmp_target(other) is None


def test_the_cleaners_know_the_temporary_names(tmp_path):
    """What killed processes left is removed: the latent store's temporary files of
    the shards a resumed writer owns (and the older ``.npy.tmp.PID`` names), the
    checkpoint folder's of other processes."""
    from mmsora.datasets.latent_store_writer import LatentStoreWriter
    from mmsora.engine.atomic_checkpoint import remove_stale_tmp_files
    store = tmp_path / 'store'
    store.mkdir()
    left = ['.shard_00000.tmp-7.npy', '.labels_00002.tmp-7.npy', 'shard_00000.npy.tmp.7']
    kept = ['.shard_00001.tmp-7.npy', 'notes.txt']  # shard 1 is rank 1's
    for name in left + kept:
        (store / name).write_bytes(b'')
    LatentStoreWriter(str(store), 4, (1, 2, 2), shard_size=1, rank=0, world_size=2)
    assert sorted(set(os.listdir(store)) - {'parts'}) == sorted(kept)
    work = tmp_path / 'work'
    work.mkdir()
    mine = os.path.basename(tmp_name(str(work / 'iter_2.pth')))
    from tests.test_engine.test_stale_tmp_folders import OLD, aged, ended_pid
    dead = ended_pid()  # (a killed process's: this machine's name, an earlier version's)
    for name in (f'.iter_1.tmp-{dead}-{host_tag()}.pth', f'.iter_1.pth.tmp-{dead}', mine,
                 'iter_0.pth'):
        (work / name).write_bytes(b'')
        aged(work / name, OLD)  # (an earlier version's name goes once an hour old)
    remove_stale_tmp_files(str(work))
    assert sorted(os.listdir(work)) == sorted([mine, 'iter_0.pth'])
