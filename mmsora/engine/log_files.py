"""A run's log file on a full disk: one line, not a traceback per log record.

mmengine's ``MMLogger`` writes the run's log into ``WORK_DIR/TIMESTAMP/TIMESTAMP.log``
through a ``logging.FileHandler``. When the disk fills (or the quota is spent, or the
file system turns read-only), every record that handler fails to write makes Python's
``logging`` print a ``--- Logging error ---`` block with a full traceback to stderr,
burying the run's own output; mmengine also writes into the handler's stream itself
(a model's ``init_weights`` dumps its initialisation there), which a full disk made an
OSError ending the run. :func:`guarded_log_files` gives each log file's handler a
stream whose first failed write or flush is said in one line on stderr, after which
the file is closed and written no more in this run; the console log (mmengine's stdout
handler) goes on as before. Other logging errors (a record that does not format) are
the handler's to report, as before.

The file is not tried again: a full disk stops the run soon anyway (the next
checkpoint's save fails with ``CheckpointWriteError``: atomic_checkpoint.py), and a
file that ends where its writes failed, with the rest on the console, is simpler to
read than one with a hole that a later write would leave unmarked.

mmengine's ``LocalVisBackend`` appends each iteration's scalars to
``WORK_DIR/TIMESTAMP/vis_data/scalars.json`` and ``TIMESTAMP.json`` (``_dump``) with no
error handling: on a full disk the first of those writes that needs space ends the
run, and tools/train.py says so in one line (``stopped_by_full_disk``:
graceful_stop.py). A failed write or flush, unlike a failed open, names no file:
inside :func:`guarded_log_files` those writes' OSErrors name theirs
(:func:`naming_os_errors`, which the checkpoints' ``last_checkpoint`` file takes too:
atomic_checkpoint.py).

The guarded stream passes a rotating handler's ``seek`` / ``tell`` and a watched
one's ``fileno`` (logging.handlers) on to the file while it is open: mmengine's
``file_handler_cfg`` may name those handlers, and they roll over as before.
"""
import contextlib
import io
import logging
import os
import threading

from mmengine.logging import MMLogger
from mmengine.visualization import LocalVisBackend

from mmsora.utils.atomic_io import tmp_target
from mmsora.utils.cli import say

__all__ = ['guard_log_file', 'guarded_log_files', 'naming_os_errors']


class LogFileGuard:
    """The guard of one log file's handler: the streams the handler opens are
    :class:`LogFileStream` objects, which write nothing once one of them failed."""

    def __init__(self, handler: logging.FileHandler):
        self.path = handler.baseFilename
        self.failed = False
        self._open = handler._open

    def open(self) -> 'LogFileStream':
        """The handler's ``_open``: it opens the file again after a ``close`` (mmengine
        appends, since torch.compile could close the run's handlers) and at a rotating
        handler's rollover."""
        if not self.failed:
            try:
                return LogFileStream(self, self._open())
            except OSError as e:  # (logging opens it outside emit's try: a crash)
                self.fail(e)
        return LogFileStream(self, None)

    def fail(self, error: OSError) -> None:
        self.failed = True
        say(f'warning: cannot write the log file {self.path} ({error.strerror or error}): '
            'it is not written again in this run; the log goes on on the console')


class LogFileStream(io.TextIOBase):
    """The stream a log file's handler writes into: the file's, until a write or a
    flush of it fails (an OSError); then the file is closed, the guard says so, and
    what comes after is dropped."""

    def __init__(self, guard: LogFileGuard, stream):
        super().__init__()
        self.guard = guard
        self.stream = stream  # None once the file failed

    def write(self, text: str) -> int:
        self._try('write', text)
        return len(text)

    def flush(self) -> None:
        self._try('flush')

    def close(self) -> None:
        self._try('close')
        self.stream = None
        super().close()

    # What logging.handlers asks of the stream besides: a RotatingFileHandler seeks to
    # the end and tells the size at each record (a text file's ``tell`` flushes, which a
    # full disk fails), a WatchedFileHandler stats ``fileno()``. Once the file failed
    # the size is 0: a handler does not roll a file over that is written no more.
    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._try('seek', offset, whence) or 0

    def tell(self) -> int:
        return self._try('tell') or 0

    def fileno(self) -> int:
        if self.stream is None:
            return super().fileno()  # (io.UnsupportedOperation)
        return self.stream.fileno()

    def _try(self, method: str, *args):
        """The file's ``method(*args)``; None once the file failed, or when this
        call fails it (an OSError: then the guard says so)."""
        if self.stream is None:
            return None
        try:
            return getattr(self.stream, method)(*args)
        except io.UnsupportedOperation:  # (an OSError, but not the disk's: a pipe's tell)
            raise
        except OSError as e:
            stream, self.stream = self.stream, None
            with contextlib.suppress(OSError, ValueError):  # (its unwritten buffer cannot
                stream.close()  # be written either)
            self.guard.fail(e)
            return None


def guard_log_file(handler: logging.FileHandler) -> None:
    """Make ``handler``'s first failed write one line on stderr, and its last."""
    if isinstance(getattr(handler._open, '__self__', None), LogFileGuard):
        return  # (guarded already)
    guard = LogFileGuard(handler)
    handler._open = guard.open
    if handler.stream is not None:  # (None: opened at the first record, delay=True)
        handler.stream = LogFileStream(guard, handler.stream)


@contextlib.contextmanager
def naming_os_errors(path):
    """Inside: an OSError that names no file (a failed write, flush or fsync; a failed
    open names its file) names ``path`` (``filename``), for the line that says it
    (``stopped_by_full_disk``: graceful_stop.py); so does one that names the hidden
    temporary file ``path`` is written through (mmsora.utils.atomic_io: its open
    failed, on a read-only file system or out of inodes)."""
    try:
        yield
    except OSError as e:
        if e.filename is None or _is_tmp_file_of(e.filename, path):
            e.filename = os.fspath(path)
        raise


def _is_tmp_file_of(name, path) -> bool:
    """Whether ``name`` is a temporary file that ``path`` is written through."""
    if not isinstance(name, (str, bytes, os.PathLike)):
        return False
    name, path = os.fsdecode(name), os.fsdecode(path)
    found = tmp_target(name)
    return (found is not None and found[0] == os.path.basename(path)
            and os.path.dirname(os.path.abspath(name))
            == os.path.dirname(os.path.abspath(path)))


# guarded_log_files may be entered again before it is left, by another thread too: the
# first entry patches mmengine and the last exit restores it (entries that overlapped,
# A entered, B entered, A left, B left, left mmengine patched for good: B restored A's).
_lock = threading.Lock()
_depth = 0
_unpatch = None


def _patch_mmengine():
    """Patch ``MMLogger.__init__`` and ``LocalVisBackend._dump`` (see
    :func:`guarded_log_files`); returns what restores them."""
    init, dump = MMLogger.__init__, LocalVisBackend._dump

    def guarded_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for handler in self.handlers:
            if isinstance(handler, logging.FileHandler):
                guard_log_file(handler)

    def named_dump(self, value_dict, file_path, *args, **kwargs):
        with naming_os_errors(file_path):
            return dump(self, value_dict, file_path, *args, **kwargs)

    MMLogger.__init__, LocalVisBackend._dump = guarded_init, named_dump

    def unpatch():
        MMLogger.__init__, LocalVisBackend._dump = init, dump
    return unpatch


@contextlib.contextmanager
def guarded_log_files():
    """Inside: each ``MMLogger`` made (a Runner's, when it is built) has its log
    files guarded (:func:`guard_log_file`) before its first record: the Runner logs
    its environment and config while it is built. An OSError writing a scalars file of
    ``LocalVisBackend`` names the file (``filename``; it still ends the run). Entries
    may nest or overlap: mmengine is as it was once the last is left."""
    global _depth, _unpatch
    with _lock:
        if _depth == 0:
            _unpatch = _patch_mmengine()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _unpatch()
                _unpatch = None
