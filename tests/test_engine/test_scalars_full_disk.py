"""A full disk under mmengine's scalars files (LocalVisBackend appends every logged
iteration to W/T/vis_data/T.json and scalars.json, with no error handling) ended the
run with an OSError traceback and 'training stopped by this error after iteration N;
...' under it. tools/train.py now says it in one line: the file, the error, where the
run stands and what to do; other errors keep their traceback."""
import errno
import functools
import os
import os.path as osp
from types import SimpleNamespace

import pytest
from mmengine.runner import IterBasedTrainLoop
from mmengine.visualization import LocalVisBackend, vis_backend

from mmsora.engine.graceful_stop import stopped_by_full_disk
from mmsora.utils.cli import run_cli
from tests.cli_helpers import forget_runs, report_file_size_limit
from tests.tiny_models import DEMO, TINY_TRAIN
from tools import train

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')

NO_SPACE = os.strerror(errno.ENOSPC)


class Disk:
    """The scalars files' disk: once ``error`` is set, each write fails with it, as
    the kernel fails a write on a full disk (an OSError that names no file)."""
    error = None

    def __init__(self, path, mode):
        self.file = open(path, mode)

    def write(self, text):
        if Disk.error is not None:
            raise OSError(Disk.error, os.strerror(Disk.error))
        return self.file.write(text)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


@pytest.fixture
def disk(monkeypatch, runs):
    """LocalVisBackend's files open on a :class:`Disk` (its module's ``open``). The
    runs make their loggers, message hubs, visualizers and scopes anew, and they are
    forgotten after the test (the ``runs`` fixture: mmengine's 'current' ones are those
    before it again)."""
    monkeypatch.setattr(vis_backend, 'open', Disk, raising=False)
    monkeypatch.setattr(Disk, 'error', None)
    yield Disk


def fills_after(monkeypatch, disk, iteration, error=errno.ENOSPC):
    """The disk fills (once) as iteration ``iteration`` starts: its logger hook's
    scalars are the first write after its train step."""
    run_iter, filled = IterBasedTrainLoop.run_iter, []

    def run_iter_then_fill(loop, data_batch):
        if loop.iter + 1 == iteration and not filled:
            filled.append(iteration)
            disk.error = error
        run_iter(loop, data_batch)

    monkeypatch.setattr(IterBasedTrainLoop, 'run_iter', run_iter_then_fill)


def train_cli(repo_root, work, *options):
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(work), '--cfg-options', *TINY_TRAIN,
            'train_cfg.max_iters=6', *options]
    return run_cli(functools.partial(train.main, argv))


def scalars_file(work):
    (timestamp,) = [d for d in os.listdir(work) if osp.isdir(work / d / 'vis_data')]
    return work / timestamp / 'vis_data' / f'{timestamp}.json'  # (written first)


def test_a_full_disk_is_one_line_naming_the_checkpoint(repo_root, tmp_path, monkeypatch,
                                                       capfd, disk):
    fills_after(monkeypatch, disk, 3)
    work = tmp_path / 'w'
    assert train_cli(repo_root, work, 'default_hooks.checkpoint.interval=2') == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f'error: cannot write {scalars_file(work)}: {NO_SPACE}; training stopped after '
        f'iteration 3; the last checkpoint is {work}/iter_2.pth (iteration 3 is not in '
        f'it): free space there, then continue with --resume (--work-dir {work})')
    assert [line for line in err.splitlines() if line.startswith('error')] == \
        err.strip().splitlines()[-1:]
    # as it says: with space again, --resume goes on from iteration 2
    disk.error = None
    forget_runs()
    assert train_cli(repo_root, work, 'default_hooks.checkpoint.interval=2', '--resume') == 0
    assert open(work / 'last_checkpoint').read().endswith('iter_6.pth')


@pytest.mark.parametrize('error, fix', [(errno.ENOSPC, 'free space there'),
                                        (errno.EROFS, 'make it writable')])
def test_before_a_checkpoint_it_says_none_was_saved(repo_root, tmp_path, monkeypatch,
                                                    capfd, disk, error, fix):
    """The same for a file system turned read-only (after I/O errors), which space
    does not mend."""
    fills_after(monkeypatch, disk, 1, error)
    work = tmp_path / 'w'
    assert train_cli(repo_root, work) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f'error: cannot write {scalars_file(work)}: {os.strerror(error)}; training stopped '
        f'after iteration 1; no checkpoint was saved yet: {fix}, then run the same command '
        'again')


def test_other_write_errors_keep_their_traceback(repo_root, tmp_path, monkeypatch, disk):
    """An I/O error (a failing disk) is not a full one: its traceback, and the line of
    where the run stands under it, as before."""
    fills_after(monkeypatch, disk, 3, error=errno.EIO)
    with pytest.raises(OSError) as info:
        train_cli(repo_root, tmp_path / 'w', 'default_hooks.checkpoint.interval=2')
    assert info.value.errno == errno.EIO
    assert info.value.__notes__[-1].startswith(
        'training stopped by this error after iteration 3; the last checkpoint is ')
    assert LocalVisBackend._dump.__name__ == '_dump'  # (mmengine's again after the run)


@pytest.mark.parametrize('error, fix', [
    (errno.ENOSPC, 'free space on the disk of {work}'),
    (errno.EROFS, 'make the disk of {work} writable'),
    (errno.EFBIG, 'raise the file-size limit (ulimit -f)')])
def test_a_write_that_names_no_file_points_at_the_work_dirs_disk(tmp_path, monkeypatch,
                                                                 error, fix):
    """A failed write or flush names no file (mmengine's writers, a hook's own): the
    line said 'free space there' of no place; it names the work dir's disk. (EFBIG
    under a file-size limit, reported set; with none: test_largest_file_advice.py.)"""
    report_file_size_limit(monkeypatch, 1 << 30)
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'iter_2.pth').write_bytes(b'')
    runner = SimpleNamespace(hooks=[], work_dir=str(work), _train_loop=SimpleNamespace(iter=3))
    assert stopped_by_full_disk(runner, OSError(error, os.strerror(error))) == (
        f'cannot write a file: {os.strerror(error)}; training stopped after iteration 3; '
        f'the last checkpoint is {work}/iter_2.pth (iteration 3 is not in it): '
        f'{fix.format(work=work)}, then continue with --resume (--work-dir {work})')
    (work / 'iter_2.pth').unlink()
    assert stopped_by_full_disk(runner, OSError(error, os.strerror(error))).endswith(
        f'no checkpoint was saved yet: {fix.format(work=work)}, then run the same command '
        'again')
