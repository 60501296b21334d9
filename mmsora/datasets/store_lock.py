"""One writing run of a latent store at a time: the lock ``OUT/.extract.lock`` that
``tools/extract_features.py`` and ``tools/convert_fastdit_features.py`` take on their
``--out`` (:class:`StoreLock`). Hidden, it is passed over by
:func:`~mmsora.datasets.store_folder.folder_entries`, so by every reader of a store."""
import contextlib
import json
import os
import os.path as osp
import socket
import time

from mmsora.utils.atomic_io import make_folders, proc_stat, remove_made_folders
from mmsora.utils.cli import first_line, note

try:
    import fcntl
except ImportError:  # (no flock here: the lock works as it does where flock fails)
    fcntl = None

__all__ = ['LOCK_NAME', 'StoreLock', 'StoreLockedError']

LOCK_NAME = '.extract.lock'  # (hidden: passed over by folder_entries, so by every reader)

# The fds of the locks this process holds, flocked: a forked child (a DataLoader worker)
# closes its copies, so a flock is held by its run alone, not by a worker left behind.
_HELD = set()


def _close_held_in_child():
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_close_held_in_child)


class StoreLockedError(RuntimeError):
    """Another run holds a store folder's lock (:class:`StoreLock`)."""


def _running(pid, started) -> bool:
    """Whether process ``pid`` of this machine, started at ``started`` (None: unknown),
    is still running (not a zombie, nor a later process given its pid)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # (another user's process)
        pass
    stat = proc_stat(pid)
    return stat is None or (stat[0] != 'Z' and started in (None, stat[1]))


def _read_lock(path):
    """``(holder, text, stat)`` of a lock file: ``holder`` its dict (pid, host, started,
    since), None where it cannot be read (empty: a run between making and writing it, or
    one stopped there); ``stat`` the file's ``os.stat_result``; None for no lock file."""
    try:
        with open(path) as f:
            stat, text = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return None
    except OSError:  # (another user's, unreadable)
        try:
            stat, text = os.stat(path), ''
        except FileNotFoundError:
            return None
    try:
        holder = json.loads(text)
        if not (isinstance(holder['pid'], int) and holder['pid'] > 0
                and isinstance(holder['host'], str)):
            holder = None
    except (ValueError, KeyError, TypeError):
        holder = None
    return holder, text, stat


def _flock(fd, wait=False) -> 'bool | None':
    """Take an exclusive flock of the file open as ``fd`` (``wait``: until it is free):
    True where taken, False where another open file holds it (a running run), None
    where this file system has none (some network ones raise OSError)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _open_to_flock(path):
    """The lock file ``path`` open for its flock: for writing where this user may (a
    network file system emulating flock with fcntl locks wants it), else for reading."""
    try:
        return os.open(path, os.O_RDWR)
    except PermissionError:  # (another user's lock)
        return os.open(path, os.O_RDONLY)


def _same_file(a, b) -> bool:
    """Whether two ``os.stat_result`` are of one file, unchanged (an inode number may be
    given again to a lock made after one removed: its mtime tells them apart)."""
    return (a.st_dev, a.st_ino, a.st_mtime_ns) == (b.st_dev, b.st_ino, b.st_mtime_ns)


# An unreadable (empty) lock younger than this is a run's between making and writing
# it: waited for; an older one is a run's stopped there (a crash), taken over.
EMPTY_LOCK_STALE_S = 5.0


class StoreLock:
    """The lock of a store folder written by one run at a time: ``root/.extract.lock``,
    made with ``O_CREAT | O_EXCL`` and holding the process id and host of the run that
    holds it, removed by :meth:`release`. Its holder keeps it open and flocked for the
    whole run, and a run takes a stopped run's lock over only while it holds that
    file's flock: of several runs taking one lock over at once, one alone removes it,
    and none removes a lock another run has made meanwhile. (Where the file system has
    no flock, a lock taken over is moved aside and read again, as before: a third run
    could then take it in that instant.) Hidden, so the folder's readers pass it over
    (:func:`folder_entries`). tools/extract_features.py takes it for the whole run
    (rank 0 alone: the ranks of one run write one store by design, each its own shards).

    Two runs writing one store keep it consistent (a shard's files are replaced whole),
    but each encodes every shard: the work is doubled. A lock of this machine whose
    holder is gone (its process no longer runs: a run killed, a crash, a reboot) is
    taken over, so such a crash does not block the next run on this machine; so is an
    empty one older than :data:`EMPTY_LOCK_STALE_S` (a run stopped between making and
    writing it; a younger one is waited for). A lock of another machine (a slurm job
    requeued onto another node, a pod restarted with a new hostname) cannot be checked
    from here: it is refused until removed by hand, and the refusal says so.

    Args:
        root (str): Store folder (made if missing, and removed again by
            :meth:`release` if still empty then, with the parents made for it).
    """

    def __init__(self, root):
        self.root, self.path = root, osp.join(root, LOCK_NAME)
        self.text = None  # what this run wrote into the lock, while it holds it
        self.fd = None  # the lock, open and flocked while this run holds it
        self.made = []  # folders made for the lock, deepest first

    def take(self) -> 'str | None':
        """Take the lock for a tool's run into its ``--out`` (extract_features.py,
        convert_fastdit_features.py): None where taken (a stopped run's lock taken over,
        with a note), else the one-line refusal naming ``--out``: a second run into it
        (both wrote every shard), or a folder this user may not write into."""
        try:
            self.acquire(on_stale=lambda holder: note(
                f'{self.root}: taking over the lock of a run that stopped ('
                + (f'pid {holder["pid"]} is gone' if holder else 'its lock is unreadable')
                + '): its finished shards are kept'))
        except StoreLockedError as e:
            return f'--out {e}'
        except OSError as e:  # (a folder this user may not write into, a file)
            return f'--out {self.root}: {first_line(e)}'
        return None

    def acquire(self, on_stale=None):
        """Take the lock; returns self. Raises :class:`StoreLockedError` (its message
        one line naming the folder and the process that holds it) where a running
        process holds it, or one of another machine (which cannot be checked from
        here). A lock left by a run that stopped is taken over: ``on_stale(holder)``
        (its dict, None where unreadable) is told first. An unreadable one younger than
        :data:`EMPTY_LOCK_STALE_S` is a run's that has made it and not yet written it:
        read again until it is written (then held) or old (then stale)."""
        self.made += make_folders(self.root)
        host, stat = socket.gethostname(), proc_stat(os.getpid())
        text = json.dumps(dict(pid=os.getpid(), host=host, started=stat and stat[1],
                               since=time.strftime('%Y-%m-%d %H:%M:%S %Z')))
        waited_until = time.monotonic() + EMPTY_LOCK_STALE_S + 1
        for _ in range(5):  # (another run may take it over between the tries)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = self._wait_written(waited_until)
                if found is None:  # (released meanwhile)
                    continue
                holder = found[0]
                if holder is not None and (holder['host'] != host or _running(
                        holder['pid'], holder.get('started'))):
                    raise StoreLockedError(self._held_by(holder, host)) from None
                self._take_over(found, on_stale)
                continue
            mine = os.fstat(fd)
            self._write(fd, text)
            if self._hold(mine, text):
                self.text = text
                self._remove_asides(host)
                return self
        raise StoreLockedError(f'{self.root} is being written by another run: its lock '
                               f'{self.path} changed hands 5 times; rerun once one has ended')

    def _take_over(self, found, on_stale):
        """Remove the lock of a run that stopped (``found``: :func:`_read_lock`'s), its
        flock held: found again unchanged under it, it is that run's, and no other run
        can be removing it or have put its own in its place (a run holds the flock of
        the lock it makes, one taking a lock over that of the lock it removes).
        ``on_stale(holder)`` is told first. Nothing where the lock has changed
        meanwhile: the caller reads it again. Where the file system has no flock,
        :meth:`_remove` (moved aside and read again)."""
        holder, old, old_stat = found
        try:
            fd = _open_to_flock(self.path)
        except FileNotFoundError:  # (removed meanwhile)
            return
        try:
            if not _same_file(os.fstat(fd), old_stat):  # (another in its place)
                return
            got, until = _flock(fd), time.monotonic() + EMPTY_LOCK_STALE_S
            while got is False:  # (another run is taking it over: an instant)
                if time.monotonic() > until:
                    raise StoreLockedError(
                        f'{self.root} is being written by another run (its lock '
                        f'{self.path} is held open by a running process): let it finish '
                        '(or stop it), then rerun to go on')
                time.sleep(0.01)
                got = _flock(fd)
            if got is None:  # (no flock on this file system)
                if on_stale is not None:
                    on_stale(holder)
                self._remove(lambda text, st: text == old and _same_file(st, old_stat))
                return
            now = _read_lock(self.path)  # (under its flock: is it still the one found?)
            if now is None or now[1] != old or not _same_file(now[2], old_stat):
                return
            if on_stale is not None:
                on_stale(holder)
            os.remove(self.path)
        finally:
            os.close(fd)

    def _hold(self, mine, text) -> bool:
        """Open the lock this run has just made (``mine``: its stat) and written
        (``text``) and flock it for the run (:attr:`fd`); False where it is no longer
        there (taken over meanwhile, as an empty lock: the caller reads who holds it
        now). Waits while another run holds its flock: one taking over a lock made
        before it, which finds this one in its place and lets go at once. Where the
        file system has no flock, held as made."""
        inode = (mine.st_dev, mine.st_ino)
        try:
            fd = _open_to_flock(self.path)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != inode or os.pread(
                    fd, len(text.encode()) + 1, 0) != text.encode():
                os.close(fd)
                return False
            got = _flock(fd, wait=True)
        except BaseException:
            os.close(fd)
            raise
        if got is None:
            os.close(fd)
            return True
        try:  # (flocked once no other run held it: still at its path?)
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != inode:
            os.close(fd)
            return False
        self.fd = fd
        _HELD.add(fd)
        return True

    def _remove_asides(self, host):
        """Remove the lock's copies moved aside (:meth:`_remove`) by runs of this
        machine that are gone (a crash in that instant), ``.extract.lock.HOST.PID`` (and
        ``.extract.lock.PID`` of older versions). Quiet where one cannot be removed."""
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for name in names:
            if not name.startswith(f'{LOCK_NAME}.'):
                continue
            made_on, _, pid = name[len(LOCK_NAME) + 1:].rpartition('.')
            if pid.isdigit() and made_on in ('', host) and not _running(int(pid), None):
                with contextlib.suppress(OSError):
                    os.remove(osp.join(self.root, name))

    def _wait_written(self, until):
        """:func:`_read_lock` of the lock, read again while it is unreadable and younger
        than :data:`EMPTY_LOCK_STALE_S` (its maker writes it in an instant). Before, an
        empty lock was taken over at once: a run reading it in that instant took over
        the lock of a run that went on, and both wrote the store. Raises
        :class:`StoreLockedError` where it stays young past ``until`` (a monotonic
        time): an mtime ahead of this machine's clock, or a maker stalled."""
        while True:
            found = _read_lock(self.path)
            if found is None or found[0] is not None:
                return found
            age = time.time() - found[2].st_mtime
            if age >= EMPTY_LOCK_STALE_S:
                return found
            if time.monotonic() > until:
                raise StoreLockedError(
                    f'{self.root} is being written by another run (its lock {self.path} '
                    f'is new and empty: made {max(age, 0):.0f} s ago, no pid written yet)'
                    f': rerun in a moment, or remove {self.path} if no run is writing there'
                ) from None
            time.sleep(0.05)

    def _write(self, fd, text):
        """Write ``text`` into the lock this run has just made (``fd``) and close it. On
        an error (a full disk, Ctrl-C) the lock is removed where it is still this
        run's (the same file: another run may have taken it over meanwhile, as an empty
        lock of a stopped run), and the error raised as it came."""
        try:
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
        except BaseException:
            mine = os.fstat(fd)  # (still open: its inode is not given to another file)
            with contextlib.suppress(OSError):  # (the write's error is the one to tell)
                self._remove(lambda _, st: (st.st_dev, st.st_ino) == (mine.st_dev,
                                                                      mine.st_ino))
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        try:
            os.close(fd)
        except BaseException:  # (a network disk may report a failed write here)
            with contextlib.suppress(OSError):
                self._remove(lambda found, _: found == text)
            raise

    def _held_by(self, holder, host) -> str:
        since = f', since {holder["since"]}' if holder.get('since') else ''
        if holder['host'] != host:
            return (f'{self.root} is being written by another run (pid {holder["pid"]} on '
                    f'{holder["host"]}{since}): let it finish, or remove {self.path} '
                    'if that run has stopped (this machine cannot check it)')
        return (f'{self.root} is being written by another run (pid {holder["pid"]}{since})'
                f': let it finish (or stop it), then rerun to go on; each shard is '
                'written once')

    def _remove(self, is_it):
        """Remove the lock file if ``is_it(text, stat)`` (:func:`_read_lock`) says it is
        the one meant (a stopped run's, or this run's). Moved aside first and read
        again: of two runs taking a lock over at once, one alone removes it, and a lock
        another run has taken meanwhile is put back. Quiet where it is gone."""
        aside = f'{self.path}.{socket.gethostname()}.{os.getpid()}'
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            found = _read_lock(aside)
            if found is not None and not is_it(found[1], found[2]):  # (another run's)
                with contextlib.suppress(OSError):
                    os.link(aside, self.path)
        finally:  # (an error here, Ctrl-C: no copy left behind; a crash: the next run's)
            with contextlib.suppress(FileNotFoundError):
                os.remove(aside)

    def release(self):
        """Remove the lock if this run holds it (not one another run has taken over),
        and the folders made for it if they are still empty. Nothing otherwise."""
        if self.text is not None:
            found = _read_lock(self.path)
            if found is not None and found[1] == self.text:
                os.remove(self.path)  # (before its flock goes: no run takes it meanwhile)
            self.text = None
        if self.fd is not None:
            if self.fd in _HELD:  # (not in a forked child, which has closed it)
                _HELD.discard(self.fd)
                os.close(self.fd)
            self.fd = None
        remove_made_folders(self.made)  # (only empty ones: a run that wrote nothing)
        self.made = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
