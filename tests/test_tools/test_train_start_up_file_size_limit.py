"""tools/train.py at the file-size limit (EFBIG: ``ulimit -f``) during its start-up:
one line with the limit's advice, as a full disk's (ENOSPC) and as the same limit
met during training. The start-up's branch left EFBIG out: a traceback from the
config's dump (errno 27, 'File too large'), where a checkpoint's write at the same
limit was one line."""
import errno
import glob
import os
import os.path as osp
import re
import resource
import subprocess
import sys

import pytest

from mmsora.utils.cli import RunError
from tests.cli_helpers import error_line, report_file_size_limit
from tests.tiny_models import DEMO, TINY_TRAIN
from tools import train

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')


# EFBIG's advice: with a file-size limit set, raise it (another --work-dir has the same
# limit); with none, the file system's largest file (FAT32), which another does not have
ULIMIT = 'raise the file-size limit (ulimit -f)'
ELSEWHERE = ("the file system's largest file size was met (FAT32: 4 GB): give a --work-dir "
             'on another file system (ext4, xfs, NTFS)')


@pytest.mark.parametrize('soft, fix', [(1 << 30, ULIMIT), (resource.RLIM_INFINITY, ELSEWHERE)])
def test_a_file_size_limit_at_start_up_is_one_line(repo_root, tmp_path, monkeypatch, soft,
                                                   fix):
    report_file_size_limit(monkeypatch, soft)  # (RLIM_INFINITY: none set)
    from mmengine.config import Config
    dump = Config.dump

    def too_large(self, file=None):  # the dump into the work dir at the limit: the
        if 'vis_data' in file:  # file made, as far as the limit let it grow
            return dump(self, file)
        open(file, 'w').close()
        raise OSError(errno.EFBIG, 'File too large', file)

    monkeypatch.setattr(Config, 'dump', too_large)
    work = tmp_path / 'w'
    with pytest.raises(RunError) as info:
        train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), '--cfg-options',
                    *TINY_TRAIN])
    dumped = work / osp.basename(DEMO)
    # (no ', or give another --work-dir': a limit is the process's, wherever it writes)
    assert str(info.value) == (
        f"{dumped}: File too large, at the run's start-up (its config and logs go to "
        f'{work}): {fix}')
    assert not dumped.exists()  # (tools/infer.py WORK_DIR read the cut one)


def test_the_visualizers_config_copy_is_not_left_cut(repo_root, tmp_path, monkeypatch,
                                                     runs):
    """The limit met by the visualizer's copy of the config (``vis_data/config.py``,
    the first file the Runner writes the config into): the copy was left cut short."""
    from mmengine.config import Config
    dump = Config.dump

    def too_large(self, file=None):  # the copy made as far as the limit let it grow
        if 'vis_data' not in file:
            return dump(self, file)
        with open(file, 'w') as f:
            f.write(self.pretty_text[:1000])
        raise OSError(errno.EFBIG, 'File too large', file)

    monkeypatch.setattr(Config, 'dump', too_large)
    report_file_size_limit(monkeypatch, resource.RLIM_INFINITY)  # (none set)
    work = tmp_path / 'w'
    with pytest.raises(RunError) as info:
        train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), '--cfg-options',
                    *TINY_TRAIN])
    at = re.escape(str(work))  # (no limit set: the file system's largest file)
    assert re.fullmatch(rf"{at}/\d{{8}}_\d{{6}}/vis_data/config\.py: File too large, at "
                        rf"the run's start-up \(its config and logs go to {at}\): "
                        + re.escape(ELSEWHERE), str(info.value)), str(info.value)
    assert glob.glob(str(work / '*' / 'vis_data')) and not glob.glob(
        str(work / '*' / 'vis_data' / '*config*'), include_hidden=True)


# Above the largest file the config's load writes (a copy of each config file: at most
# 2.6 kB, default_runtime.py), below the dumped config with the long --work-dir in it.
LIMIT = 3072


def test_a_real_file_size_limit_at_start_up_is_one_line(repo_root, tmp_path):
    """The kernel's EFBIG under RLIMIT_FSIZE, in a process of its own: the config's
    copies (the tiny demo's, 2.4 kB, with a 1.6 kB --work-dir in it; the visualizer's
    ``vis_data/config.py`` first, then the work dir's) are the first files that grow
    past the limit."""
    work = tmp_path.joinpath(*(c * 200 for c in 'defghijk'), 'w')  # (each name <= 255)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    assert hard == resource.RLIM_INFINITY or hard >= LIMIT

    def limited():  # (Python ignores SIGXFSZ: the write fails with EFBIG instead)
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))

    path = osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    result = subprocess.run(  # (its output goes into pipes, which have no such limit)
        [sys.executable, 'tools/train.py', DEMO, '--work-dir', str(work), '--cfg-options',
         *TINY_TRAIN, 'train_cfg.max_iters=2'], cwd=repo_root, capture_output=True,
        text=True, timeout=300, preexec_fn=limited,
        env={**os.environ, 'OMP_NUM_THREADS': '1', 'PATH': path})
    at = re.escape(str(work))  # (the failed write's file, or the work dir where the
    # write names none)
    assert re.fullmatch(rf"error: {at}(/\S+)?: File too large, at the run's start-up "
                        rf'\(its config and logs go to {at}\): raise the file-size '
                        r'limit \(ulimit -f\)', error_line(result)), result.stderr[-3000:]
    assert 'Saving checkpoint' not in result.stdout + result.stderr  # (not at training)
    assert not (work / osp.basename(DEMO)).exists()
    # nor the visualizer's copy, which met the limit first, cut short in the log folder
    assert not glob.glob(str(work / '*' / 'vis_data' / '*config*'), include_hidden=True)
