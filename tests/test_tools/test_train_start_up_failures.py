"""tools/train.py at start-up: a gloo run's collectives wait what the config's
env_cfg.dist_cfg.timeout says, and a full disk is one line that leaves no empty
dumped config behind."""
import errno
import os.path as osp

import pytest

from mmsora.utils.cli import UserError
from tests.cli_helpers import failed_start_up
from tests.tiny_models import DEMO, TINY_TRAIN
from tools import train

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')


class Stop(Exception):
    pass


def test_the_configs_collective_timeout_reaches_gloo(repo_root, tmp_path, monkeypatch):
    import mmsora.engine
    seen = []

    def init(launcher, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(mmsora.engine, 'init_cpu_distributed', init)
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'w'), '--cfg-options',
            *TINY_TRAIN]
    for extra, expected in ((['env_cfg.dist_cfg.timeout=20'], dict(timeout_s=20)),
                            ([], dict(timeout_s=3600))):  # (default_runtime's hour)
        with pytest.raises(Stop):
            train.main(argv + extra)
        assert seen.pop() == expected
    with pytest.raises(UserError, match=r'^env_cfg\.dist_cfg\.timeout must be a number of '
                                        r'seconds > 0, got 0$'):
        train.main(argv + ['env_cfg.dist_cfg.timeout=0'])


def test_a_full_disk_at_start_up_is_one_line(tmp_path, monkeypatch):
    # the disk full when the Runner dumps the config into the work dir (after the
    # visualizer's copy): the file made, empty, as a write on a full disk leaves it
    work = tmp_path / 'w'
    error = failed_start_up(work, monkeypatch, errno.ENOSPC)
    dumped = work / osp.basename(DEMO)
    assert str(error) == (
        f"{dumped}: No space left on device, at the run's start-up (its config and logs "
        f'go to {work}): free space there, or give another --work-dir')
    assert not dumped.exists()  # (tools/infer.py WORK_DIR read the empty one)


def test_the_resumed_checkpoint_is_read_once_at_start_up(repo_root, tmp_path, monkeypatch):
    """The start-up's checks of --resume (its layout, model, objective, a complete run,
    the config changes since) read the checkpoint once and parse its recorded config
    once (four reads and three parses before); nothing of it is held when the Runner
    starts (it would keep the file mapped into the training)."""
    import tempfile

    import mmengine.runner
    from mmengine.config import Config

    import mmsora.utils.checkpoint as checkpoint
    from mmsora.engine import load_from_checks
    work = tmp_path / 'w'
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(work), '--cfg-options', *TINY_TRAIN,
            'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2']
    train.main(argv)
    ckpt = str(work / 'iter_2.pth')
    real, reads = checkpoint.load_checkpoint_file, []
    fromfile, parses = Config.fromfile, []

    def spy(path, *args, **kwargs):
        reads.append(path)
        return real(path, *args, **kwargs)

    def parse(filename, *args, **kwargs):  # (the recorded text: a temporary file)
        if osp.dirname(str(filename)) == tempfile.gettempdir():
            parses.append(filename)
        return fromfile(filename, *args, **kwargs)

    def from_cfg(cfg):
        assert not load_from_checks._start_up_reads  # (nothing keeps it mapped)
        raise Stop

    monkeypatch.setattr(checkpoint, 'load_checkpoint_file', spy)
    monkeypatch.setattr(Config, 'fromfile', staticmethod(parse))
    monkeypatch.setattr(mmengine.runner.Runner, 'from_cfg', from_cfg)
    with pytest.raises(Stop):
        train.main(argv[:-2] + ['train_cfg.max_iters=4', '--resume', ckpt])
    assert reads == [ckpt]
    assert len(parses) == 1
