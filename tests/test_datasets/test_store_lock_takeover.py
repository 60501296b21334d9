"""The store lock (StoreLock) taken over by one run alone: several runs racing for a
stopped run's lock, a run killed inside its takeover, the copies an older takeover left
aside, a file system without flock; and tools/extract_features.py reading its --out
again once it holds the lock."""
import errno
import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import pytest

from mmsora.datasets import store_lock as ls
from mmsora.datasets.store_folder import folder_entries, foreign_folder
from mmsora.datasets.store_lock import LOCK_NAME, StoreLock
from tests.extract_tools import REPO, extract, run_extract

pytestmark = pytest.mark.usefixtures('kept_environ', 'fresh_notes')

FORK = multiprocessing.get_context('fork')
REFUSED = ' is being written by another run ('


def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def write_stale_lock(root, pid):
    (root / LOCK_NAME).write_text(json.dumps(dict(
        pid=pid, host=socket.gethostname(), started=None, since='2026-12-07 01:00:00 UTC')))


def asides(root):
    """The lock's copies in ``root`` (``.extract.lock.*``)."""
    return sorted(n for n in os.listdir(root) if n.startswith(f'{LOCK_NAME}.'))


# --------------------------------------------------------------------------- #
#                        1. one run takes a lock over                          #
# --------------------------------------------------------------------------- #
def racer(root, rounds, barrier, results, seed):
    """A run of its own (a forked process) taking the lock in each round, on a slow disk:
    each read of the lock takes up to 10 ms (the instants between a run's reading it
    and acting on it, where another run acts)."""
    rng, real_read = random.Random(seed), ls._read_lock

    def slow_read(path):
        found = real_read(path)
        time.sleep(rng.random() * 0.01)
        return found
    ls._read_lock = slow_read
    for r in range(rounds):
        barrier.wait(60)
        lock = StoreLock(root)
        try:
            said = lock.take()
        except Exception as e:  # (told to the test: not a refusal)
            said = f'raised {e!r}'
        results.put((r, said))
        barrier.wait(60)  # (every run has tried before the one that holds it lets go)
        lock.release()
        barrier.wait(60)


def test_one_run_alone_takes_a_stopped_runs_lock_over(tmp_path):
    """Run B moved a stopped run's lock aside to take it over while run C had already
    taken it over and made its own: B moved C's lock aside, and run D made one in that
    instant; B put C's back in vain (D's was there) and removed it: C and D both held
    the lock (both wrote every shard)."""
    root, racers, rounds = tmp_path / 'store', 4, 25
    root.mkdir()
    pid = dead_pid()
    barrier, results = FORK.Barrier(racers + 1), FORK.Queue()
    procs = [FORK.Process(target=racer, args=(str(root), rounds, barrier, results, i))
             for i in range(racers)]
    for proc in procs:
        proc.start()
    try:
        for r in range(rounds):
            for name in os.listdir(root):
                os.remove(root / name)
            write_stale_lock(root, pid)
            for _ in range(3):  # (go; all tried; all let go)
                barrier.wait(60)
            said = [results.get(timeout=60) for _ in range(racers)]
            assert {n for n, _ in said} == {r}
            winners = [s for _, s in said if s is None]
            refusals = [s for _, s in said if s is not None]
            assert len(winners) == 1, (r, said)
            assert all(s.startswith(f'--out {root}{REFUSED}') for s in refusals), said
            assert asides(root) == [] and os.listdir(root) == []
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * racers


def killed_at_remove(root):
    """Take the lock over, killed (SIGKILL: no clean-up) at its first removal of a file."""
    os.remove = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
    StoreLock(root).take()


def test_a_run_killed_in_a_takeover_leaves_no_copy_of_the_lock(tmp_path, capsys):
    """The lock moved aside to be read again (``.extract.lock.PID``) stayed there when
    the run was killed in that instant."""
    root = tmp_path / 'store'
    root.mkdir()
    pid = dead_pid()
    write_stale_lock(root, pid)
    proc = FORK.Process(target=killed_at_remove, args=(str(root),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert asides(root) == []
    lock = StoreLock(str(root))
    assert lock.take() is None
    assert (f'taking over the lock of a run that stopped (pid {pid} is gone)'
            in capsys.readouterr().err)
    lock.release()
    assert os.listdir(root) == []


def test_copies_left_aside_by_runs_that_are_gone_are_removed(image_folder, tiny_vae_dir,
                                                              tmp_path):
    """Copies an older version left (a crash in a takeover) stayed for good; those of a
    running process, or of another machine (which this one cannot check), are kept."""
    out, host, pid = tmp_path / 'store', socket.gethostname(), dead_pid()
    out.mkdir()
    gone = [f'{LOCK_NAME}.{pid}', f'{LOCK_NAME}.{host}.{pid}']
    kept = [f'{LOCK_NAME}.{host}.{os.getpid()}', f'{LOCK_NAME}.elsewhere.{pid}']
    for name in gone + kept:
        write_stale_lock(out, pid)
        os.rename(out / LOCK_NAME, out / name)
    assert set(folder_entries(str(out)).values()) == {'hidden'}
    assert foreign_folder(str(out)) == []  # (hidden: not another's files)
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    assert asides(out) == sorted(kept)


class NoFlock:
    """``fcntl`` of a file system without flock (an NFS mount without its lock daemon)."""
    LOCK_EX, LOCK_NB = 2, 4

    @staticmethod
    def flock(fd, how):
        raise OSError(errno.ENOLCK, 'No locks available')


def test_without_flock_a_lock_is_taken_over_as_before(tmp_path, monkeypatch, capsys):
    """Where flock fails, a stopped run's lock is moved aside and read again; a Ctrl-C
    there left the copy behind."""
    monkeypatch.setattr(ls, 'fcntl', NoFlock)
    root = tmp_path / 'store'
    root.mkdir()
    pid = dead_pid()
    write_stale_lock(root, pid)
    lock = StoreLock(str(root))
    assert lock.take() is None and lock.fd is None
    assert 'taking over the lock of a run that stopped' in capsys.readouterr().err
    assert json.loads((root / LOCK_NAME).read_text())['pid'] == os.getpid()
    assert StoreLock(str(root)).take().startswith(f'--out {root}{REFUSED}pid {os.getpid()}')
    lock.release()
    assert os.listdir(root) == []
    write_stale_lock(root, pid)
    real_read = ls._read_lock

    def interrupted_aside(path):
        if os.path.basename(path) != LOCK_NAME:
            raise KeyboardInterrupt
        return real_read(path)
    monkeypatch.setattr(ls, '_read_lock', interrupted_aside)
    with pytest.raises(KeyboardInterrupt):
        StoreLock(str(root)).take()
    assert asides(root) == []


def test_a_forked_child_does_not_keep_the_lock_held(tmp_path):
    """The lock is flocked by its run alone: a child it forked (a DataLoader worker)
    that outlives it does not keep a next run out."""
    root = tmp_path / 'store'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import os, sys, time\n'
         'from mmsora.datasets.store_lock import StoreLock\n'
         f'StoreLock({str(root)!r}).acquire()\n'
         'child = os.fork()\n'
         'if not child:\n'
         '    time.sleep(60)\n'
         '    os._exit(0)\n'
         'print(child, flush=True)\n'
         'sys.stdin.read()\n'], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    child = None
    try:
        child = int(holder.stdout.readline())
        lock = StoreLock(str(root))
        assert lock.take().startswith(f'--out {root}{REFUSED}pid {holder.pid}')
        import fcntl
        fd = os.open(root / LOCK_NAME, os.O_RDONLY)
        with pytest.raises(BlockingIOError):  # (flocked by its run)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        holder.kill()  # (no release: as a crash; its child goes on)
        holder.wait()
        begun = time.monotonic()
        assert lock.take() is None and time.monotonic() - begun < 2
        lock.release()
    finally:
        holder.kill()
        holder.wait()
        if child:
            os.kill(child, signal.SIGKILL)


# --------------------------------------------------------------------------- #
#                 2. the store read again once the lock is held                #
# --------------------------------------------------------------------------- #
def test_a_store_another_run_finished_meanwhile_is_not_extracted_again(
        image_folder, tiny_vae_dir, tmp_path, capsys):
    """The store was read before the lock was taken: a run that finished it between
    them (it held the lock then) left this run loading the models and resuming a store
    that was complete."""
    out = tmp_path / 'store'
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    index = (out / 'index.json').read_text()
    os.remove(out / 'index.json')  # (the other run has its last step to go)
    capsys.readouterr()
    real_lock_out = extract.lock_out

    def finished_meanwhile(lock, rank):
        (out / 'index.json').write_text(index)  # (it finishes, its lock goes)
        real_lock_out(lock, rank)
    with mock.patch.object(extract, 'lock_out', finished_meanwhile), \
            mock.patch.object(extract, 'build_vae', side_effect=AssertionError('loaded')):
        summary = run_extract(image_folder, str(out), tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 0
    assert ': nothing to do' in capsys.readouterr().out
    assert LOCK_NAME not in os.listdir(out)


def test_a_store_begun_meanwhile_with_its_own_shard_size_is_taken(
        image_folder, tiny_vae_dir, tmp_path):
    """With no --shard-size, this run chose one for a new store, and kept it for the
    store another run began and finished meanwhile in shards of another size: refused
    after the models loaded, as if that size were given."""
    out, other_ran = tmp_path / 'store', []
    real_lock_out = extract.lock_out

    def other_run_meanwhile(lock, rank):
        if not other_ran:  # (once: the other run's own lock_out comes here too)
            other_ran.append(None)
            other_ran[0] = run_extract(image_folder, str(out), tiny_vae_dir)
        real_lock_out(lock, rank)
    with mock.patch.object(extract, 'lock_out', other_run_meanwhile), \
            mock.patch.object(extract, 'build_vae', wraps=extract.build_vae) as built:
        summary = extract.main(['--data-path', image_folder, '--out', str(out), '--vae',
                                tiny_vae_dir, '--image-size', '16', '--num-workers', '0',
                                '--device', 'cpu'])
    assert other_ran[0]['complete'] and built.call_count == 1  # (the other run's)
    assert summary['complete'] and summary['num_shards'] == other_ran[0]['num_shards'] > 1
