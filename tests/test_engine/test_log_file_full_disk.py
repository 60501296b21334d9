"""A run's log file on a full disk: Python's logging printed a '--- Logging error ---'
block with a full traceback for every record the file could not take, burying the
run's output. tools/train.py now says it in one line and writes the file no more; the
console log goes on."""
import errno
import logging
import logging.handlers
import os
import os.path as osp

import pytest
from mmengine.logging import MMLogger
from mmengine.runner import IterBasedTrainLoop, Runner
from mmengine.visualization import LocalVisBackend

from mmsora.engine import log_files
from mmsora.engine.log_files import guarded_log_files
from tests.tiny_models import DEMO, TINY_TRAIN
from tools import train

pytestmark = pytest.mark.usefixtures('kept_environ', 'malloc_calls')

NO_SPACE = os.strerror(errno.ENOSPC)


class Disk:
    """A log file's stream on a disk that fills: writes reach the file until ``full``,
    then fail as a full disk fails them."""
    full = False

    def __init__(self, path):
        self.file = open(path, 'a')

    def write(self, text):
        if Disk.full:
            raise OSError(errno.ENOSPC, NO_SPACE)
        return self.file.write(text)

    def flush(self):
        self.file.flush()

    def close(self):
        self.file.close()

    def seek(self, *args):  # (what a RotatingFileHandler asks of its stream besides)
        return self.file.seek(*args)

    def tell(self):
        return self.file.tell()

    def fileno(self):
        return self.file.fileno()


@pytest.fixture
def disk(monkeypatch):
    """Log files (``logging.FileHandler``'s streams) open on a :class:`Disk`. The
    loggers made meanwhile are closed and forgotten after the test (mmengine's
    'current' logger, which ``print_log`` writes through, is the one before it)."""
    opened = []

    def open_on_disk(handler):
        opened.append(Disk(handler.baseFilename))
        return opened[-1]

    loggers = set(MMLogger._instance_dict)
    monkeypatch.setattr(logging.FileHandler, '_open', open_on_disk)
    monkeypatch.setattr(Disk, 'full', False)
    yield Disk
    for name in set(MMLogger._instance_dict) - loggers:
        for handler in MMLogger._instance_dict.pop(name).handlers:
            handler.close()
    for stream in opened:
        stream.close()


FILLS = {  # where the disk fills: the last record the log file holds
    # the Runner logs its environment and config as it is built
    'at start-up': None,
    # mmengine writes the model's initialisation into the file's stream itself (an
    # OSError that ended the run)
    'at the model initialisation': 'Config:',
    # a record per iteration (each a '--- Logging error ---' block)
    'after iteration 1': 'Iter(train) [1/4]',
}


@pytest.mark.parametrize('fills', list(FILLS))
def test_a_full_disk_is_one_line_and_the_console_log_goes_on(repo_root, tmp_path, monkeypatch,
                                                             capfd, disk, fills):
    if fills == 'at start-up':
        disk.full = True
    elif fills == 'at the model initialisation':
        start = Runner.train

        def fill_then_train(runner):
            disk.full = True
            return start(runner)

        monkeypatch.setattr(Runner, 'train', fill_then_train)
    else:
        run_iter = IterBasedTrainLoop.run_iter

        def run_iter_then_fill(loop, data_batch):
            run_iter(loop, data_batch)
            disk.full = True

        monkeypatch.setattr(IterBasedTrainLoop, 'run_iter', run_iter_then_fill)
    work = tmp_path / 'w'
    train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), '--cfg-options',
                *TINY_TRAIN, 'train_cfg.max_iters=4'])
    out, err = capfd.readouterr()
    assert err.count('--- Logging error ---') == 0, err[-3000:]
    (log_file,) = [osp.join(work, d, f'{d}.log') for d in os.listdir(work)
                   if osp.isfile(osp.join(work, d, f'{d}.log'))]
    said = [line for line in err.splitlines() if 'log file' in line]
    assert said == [f'warning: cannot write the log file {log_file} ({NO_SPACE}): it is not '
                    'written again in this run; the log goes on on the console'], err[-3000:]
    assert 'Iter(train) [4/4]' in out  # (mmengine's console handler: stdout)
    with open(log_file) as f:
        written = f.read()
    last = FILLS[fills]
    assert 'Iter(train) [2/4]' not in written and (last is None or last in written)
    if last is None:
        assert written == ''


def test_other_logging_errors_are_still_shown(tmp_path, capfd, disk):
    """Only a failed write is taken: a record that does not format still gets its
    '--- Logging error ---' block from each handler, before the disk fills and after.
    A logger made outside ``guarded_log_files`` is mmengine's as it was."""
    log_file = str(tmp_path / 'run.log')
    with guarded_log_files():
        logger = MMLogger.get_instance('log-file-guard-test', log_file=log_file,
                                       file_mode='a')  # (as the Runner's)
    logger.info('%d items', 'some')  # a mistake in the record, not the disk's
    err = capfd.readouterr().err
    assert err.count('--- Logging error ---') == 2, err  # (the console's and the file's)
    logger.info('first')
    disk.full = True
    for i in range(3):
        logger.info(f'lost {i}')
    logger.info('%d items', 'some')
    out, err = capfd.readouterr()
    assert err.count('--- Logging error ---') == 2, err
    assert err.count('cannot write the log file') == 1, err
    assert 'lost 2' in out
    with open(log_file) as f:
        assert 'first' in f.read()
    (handler,) = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    handler.close()  # (then opened again at the next record: as torch.compile may do)
    logger.info('lost too')
    out, err = capfd.readouterr()
    assert 'lost too' in out and not err, err

    unguarded = MMLogger.get_instance('log-file-guard-test-2',
                                      log_file=str(tmp_path / 'run2.log'))
    unguarded.info('lost')
    assert '--- Logging error ---' in capfd.readouterr().err


def test_a_rotating_log_file_rolls_over_and_fails_in_one_line(tmp_path, capfd, disk):
    """mmengine's ``file_handler_cfg`` may name a RotatingFileHandler, which seeks and
    tells its stream at each record (the guarded stream had neither: a '--- Logging
    error ---' block every record, and no rollover)."""
    log_file = tmp_path / 'run.log'
    with guarded_log_files():
        logger = MMLogger.get_instance(
            'log-file-guard-rotating', log_file=str(log_file),
            file_handler_cfg=dict(type='RotatingFileHandler', maxBytes=400, backupCount=2))
    (handler,) = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    assert isinstance(handler, logging.handlers.RotatingFileHandler)
    assert handler.stream.fileno() == handler.stream.stream.fileno()
    for i in range(12):
        logger.info(f'record {i:02d} ' + 'x' * 40)
    err = capfd.readouterr().err
    assert not err, err[-3000:]
    rolled = tmp_path / 'run.log.1'
    assert rolled.exists() and 'record' in rolled.read_text()
    assert 'record 11' in log_file.read_text() and osp.getsize(log_file) <= 400
    disk.full = True
    for i in range(12):
        logger.info(f'lost {i:02d} ' + 'x' * 40)
    err = capfd.readouterr().err
    assert err.splitlines() == [
        f'warning: cannot write the log file {log_file} ({NO_SPACE}): it is not written '
        'again in this run; the log goes on on the console'], err[-3000:]
    assert 'lost' not in log_file.read_text() + rolled.read_text()


def test_entries_may_nest_and_overlap(tmp_path, capfd, disk):
    """Enter A, enter B, leave A, leave B (two threads' runs, say): loggers made
    until the last exit are guarded, and mmengine is as it was after it (the second
    entry kept the first's patch as mmengine's, and restored that for good)."""
    init, dump = MMLogger.__init__, LocalVisBackend._dump
    a, b = guarded_log_files(), guarded_log_files()
    a.__enter__()
    b.__enter__()
    a.__exit__(None, None, None)
    logger = MMLogger.get_instance('log-file-guard-overlap', log_file=str(tmp_path / 'o.log'))
    b.__exit__(None, None, None)
    assert (MMLogger.__init__, LocalVisBackend._dump) == (init, dump)
    assert log_files._depth == 0
    disk.full = True
    logger.info('lost')
    err = capfd.readouterr().err
    assert '--- Logging error ---' not in err and 'cannot write the log file' in err, err
    with guarded_log_files():
        with guarded_log_files():
            assert MMLogger.__init__ is not init
        assert MMLogger.__init__ is not init
    assert (MMLogger.__init__, LocalVisBackend._dump) == (init, dump)
