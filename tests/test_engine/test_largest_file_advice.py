"""EFBIG with no file-size limit set (``ulimit -f`` unlimited) is the file system's
largest file (FAT32 / exFAT-formatted USB disks: 4 GB; some network file systems):
the advice is a --work-dir on another file system, not raising a limit that is not
set (graceful_stop.no_room_fix). With a limit set, it is still the ulimit advice."""
import errno
import os
import os.path as osp
import resource
from types import SimpleNamespace

import pytest

from mmsora.engine.graceful_stop import no_room_fix, stopped_by_full_disk
from mmsora.utils.checkpoint import load_checkpoint_file
from tests.test_engine.test_atomic_checkpoint import KEEP_1, last_checkpoint, no_room_from
from tests.cli_helpers import report_file_size_limit
from tests.test_engine.test_scalars_full_disk import train_cli

LARGEST = "the file system's largest file size was met (FAT32: 4 GB)"
ELSEWHERE = 'a --work-dir on another file system (ext4, xfs, NTFS)'
ULIMIT = 'raise the file-size limit (ulimit -f)'
TOO_LARGE = os.strerror(errno.EFBIG)




@pytest.mark.parametrize('soft, fix', [(1 << 20, ULIMIT),
                                       (resource.RLIM_INFINITY, f'{LARGEST}: give {ELSEWHERE}')])
def test_efbig_advice_depends_on_the_limit(monkeypatch, soft, fix):
    report_file_size_limit(monkeypatch, soft)
    assert no_room_fix(errno.EFBIG) == fix
    assert no_room_fix(errno.EFBIG, '/w') == fix
    assert no_room_fix(errno.ENOSPC) == 'free space there'  # (no other code changes)


def test_at_the_largest_file_the_run_goes_on_elsewhere(tmp_path, monkeypatch):
    """The one line of a run stopped there: from the checkpoint's path, in a work dir on
    another file system (a plain --resume in the same one fails there again)."""
    report_file_size_limit(monkeypatch, resource.RLIM_INFINITY)
    work = tmp_path / 'w'
    work.mkdir()
    (work / 'iter_2.pth').write_bytes(b'')
    runner = SimpleNamespace(hooks=[], work_dir=str(work), _train_loop=SimpleNamespace(iter=3))
    error = OSError(errno.EFBIG, TOO_LARGE, str(work / 'big.bin'))
    assert stopped_by_full_disk(runner, error) == (
        f'cannot write {work}/big.bin: {TOO_LARGE}; training stopped after iteration 3; '
        f'the last checkpoint is {work}/iter_2.pth (iteration 3 is not in it): {LARGEST}: '
        f'continue with --resume {work}/iter_2.pth and {ELSEWHERE}')
    (work / 'iter_2.pth').unlink()
    assert stopped_by_full_disk(runner, error) == (
        f'cannot write {work}/big.bin: {TOO_LARGE}; training stopped after iteration 3; '
        f'no checkpoint was saved yet: {LARGEST}: run the same command again with '
        f'{ELSEWHERE}')
    report_file_size_limit(monkeypatch, 1 << 30)  # a limit set: raise it, the same work dir
    assert stopped_by_full_disk(runner, error).endswith(
        f'no checkpoint was saved yet: {ULIMIT}, then run the same command again')


@pytest.mark.usefixtures('kept_environ', 'malloc_calls')
def test_a_checkpoint_at_the_largest_file_is_one_line_and_resumes_elsewhere(
        repo_root, tmp_path, capfd, runs, monkeypatch):
    """tools/train.py: a checkpoint's write fails with EFBIG (each ``os.fsync``), no
    limit set; as the line says, --resume CHECKPOINT into another work dir finishes."""
    report_file_size_limit(monkeypatch, resource.RLIM_INFINITY)
    work = tmp_path / 'w'
    with no_room_from(3, errno.EFBIG):
        assert train_cli(repo_root, work, *KEEP_1) == 2
    err = capfd.readouterr().err
    assert 'Traceback' not in err, err[-3000:]
    good = work / 'iter_2.pth'
    assert [line for line in err.splitlines() if line.startswith('error')] == [
        f'error: cannot write checkpoint {work}/iter_4.pth: {TOO_LARGE} (no partial file '
        f'left); training stopped after iteration 4; the last checkpoint is {good} '
        f'(intact; iterations 3-4 are not in it): {LARGEST}: continue with --resume '
        f'{good} and {ELSEWHERE}'], err[-3000:]
    assert last_checkpoint(work) == str(good)
    runs()
    other = tmp_path / 'other'
    assert train_cli(repo_root, other, *KEEP_1, '--resume', str(good)) == 0
    assert last_checkpoint(other) == str(other / 'iter_6.pth')
    assert load_checkpoint_file(other / 'iter_6.pth')['meta']['iter'] == 6
    assert osp.exists(good)  # (the first work dir is left as it was)
