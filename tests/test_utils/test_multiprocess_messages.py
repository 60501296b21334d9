"""Errors and logs of a run under several processes: a user's mistake said once per
machine, not by every process; a port in use said in one line; the batch layout in
the run's log file."""
import time

import pytest

from mmsora.utils import cli
from mmsora.utils.cli import RunError, UserError, run_cli

LAUNCH_KEYS = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'LOCAL_WORLD_SIZE', 'SLURM_PROCID',
               'SLURM_LOCALID', 'SLURM_NTASKS')


class Waits(list):
    """The seconds run_cli waited for the launcher; ``stopped``: whether the launcher
    stops the process while it waits (its SIGTERM, as a handler raises it)."""
    stopped = True

    def sleep(self, seconds):
        self.append(seconds)
        if self.stopped:
            raise KeyboardInterrupt


@pytest.fixture
def waits(monkeypatch):
    """run_cli's waits for the launcher (time.sleep's calls, none of them slept)."""
    found = Waits()
    monkeypatch.setattr(time, 'sleep', found.sleep)
    return found


def _launch(monkeypatch, **env):
    for key in LAUNCH_KEYS:  # (set first: a key absent now is then taken off again at
        monkeypatch.setenv(key, '')  # the end, where the code under test set it, as
        monkeypatch.delenv(key)  # mmengine's slurm start sets WORLD_SIZE: infer tests
        # after it were refused as 'one of 2 torchrun processes')
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _fails(error):
    def main():
        raise error
    return main


# ---------------------------------------------------------------------------
# A user's mistake, once per machine
# ---------------------------------------------------------------------------

def test_a_user_mistake_is_said_by_the_first_process_of_a_machine_only(
        monkeypatch, capsys, waits):
    mistake = UserError('--labels [7] out of range: the model has 4 classes')
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    assert run_cli(_fails(mistake)) == 2
    assert capsys.readouterr().err == ''  # (torchrun stopped it while it waited)
    assert waits == [cli.LAUNCHER_GRACE_S]
    _launch(monkeypatch, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')
    assert run_cli(_fails(mistake)) == 2
    assert capsys.readouterr().err == f'error: {mistake}\n'
    # the first process of the second machine says it too, at once
    _launch(monkeypatch, RANK='8', LOCAL_RANK='0', WORLD_SIZE='16')
    assert run_cli(_fails(mistake)) == 2
    assert capsys.readouterr().err == f'error: {mistake}\n'
    assert waits == [cli.LAUNCHER_GRACE_S]


def test_a_user_mistake_under_srun_is_said_by_the_first_task_of_a_node(
        monkeypatch, capsys, waits):
    _launch(monkeypatch, SLURM_PROCID='3', SLURM_LOCALID='3', SLURM_NTASKS='8')
    assert run_cli(_fails(UserError('--resume: not a checkpoint'))) == 2
    assert capsys.readouterr().err == ''
    _launch(monkeypatch, SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NTASKS='8')
    assert run_cli(_fails(UserError('--resume: not a checkpoint'))) == 2
    assert capsys.readouterr().err == 'error: --resume: not a checkpoint\n'


def test_a_user_mistake_of_one_process_alone_is_said_by_it(monkeypatch, capsys, waits):
    """Not stopped by the launcher while it waited: the first process did not fail,
    the mistake is this one's."""
    waits.stopped = False
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    assert run_cli(_fails(UserError('cannot read prompts.txt'))) == 2
    assert capsys.readouterr().err == 'error: cannot read prompts.txt\n'
    assert waits == [cli.LAUNCHER_GRACE_S]


def test_a_missing_path_the_user_gave_is_a_user_mistake_still_caught_as_not_found(
        monkeypatch, capsys, waits):
    """A run folder or FID reference that does not exist is the same on every process
    (raised as UserPathNotFound, it is said once a machine); its callers catch it as
    FileNotFoundError."""
    from mmsora.utils.cli import UserPathNotFound
    missing = UserPathNotFound('no such config file or work dir: /runs/nowhere')
    with pytest.raises(FileNotFoundError):
        raise missing
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    assert run_cli(_fails(missing)) == 2
    assert capsys.readouterr().err == ''
    _launch(monkeypatch, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')
    assert run_cli(_fails(missing)) == 2
    assert capsys.readouterr().err == f'error: {missing}\n'


@pytest.mark.parametrize('error', [
    RunError('/work/run: No space left on device: free space there'),
    PermissionError(13, 'Permission denied', '/work/run/batch_000001.npz'),
], ids=['RunError', 'OSError'])
def test_an_error_one_process_can_meet_alone_is_said_by_every_process(
        monkeypatch, capsys, waits, error):
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    assert run_cli(_fails(error)) == 2
    assert capsys.readouterr().err.startswith('error: ')
    assert waits == []  # at once


# ---------------------------------------------------------------------------
# A port in use
# ---------------------------------------------------------------------------

@pytest.fixture
def held_port():
    """A port another program listens on."""
    import socket
    with socket.socket() as s:
        s.bind(('', 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_port_in_use_under_srun_is_one_line_naming_it(monkeypatch, capsys, held_port):
    """srun's rank 0 listens on MASTER_PORT itself: a 30-line traceback ending in
    DistNetworkError ... EADDRINUSE."""
    import torch.distributed as dist

    from mmsora.engine.compat import init_cpu_distributed
    _launch(monkeypatch, SLURM_PROCID='0', SLURM_LOCALID='0', SLURM_NTASKS='2',
            SLURM_NODELIST='localhost', MASTER_ADDR='127.0.0.1',
            MASTER_PORT=str(held_port))
    with pytest.raises(RunError, match=rf'^port {held_port} \(MASTER_PORT\) is in use on '
                       r'this machine: .*; set MASTER_PORT to a free port \(MASTER_PORT='
                       r'\d+ is free here now\) and start again$'):
        init_cpu_distributed('slurm', timeout_s=20)
    assert not dist.is_initialized()
    assert run_cli(lambda: init_cpu_distributed('slurm', timeout_s=20)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: port {held_port} (MASTER_PORT) is in use')
    assert err.count('\n') == 1 and 'Traceback' not in err


def test_a_port_in_use_of_mmengines_own_group_is_one_line():
    """On GPUs mmengine starts the nccl group under srun itself: its error, explained."""
    import torch.distributed as dist

    from mmsora.utils.error_messages import explain_error
    error = dist.DistNetworkError(
        'The server socket has failed to listen on any local network address. port: '
        '29500, useIpv6: false, code: -98, name: EADDRINUSE, message: address already '
        'in use')
    assert explain_error(error).startswith('port 29500 (MASTER_PORT) is in use on this '
                                           'machine')
    assert explain_error(dist.DistNetworkError('Connection reset by peer')) is None


# ---------------------------------------------------------------------------
# The batch layout in the run's log file
# ---------------------------------------------------------------------------

@pytest.mark.usefixtures('kept_environ')  # (tools/train.py's parse_args sets LOCAL_RANK)
def test_the_batch_layout_is_in_the_runs_log_file(repo_root, tmp_path):
    """tools/train.py printed it on the terminal only, never in the log file."""
    import glob

    from mmengine.runner import Runner

    from tests.tiny_models import tiny_cfg
    work = tmp_path / 'batch_layout_run'  # (the logger's name: one of its own)
    runner = Runner.from_cfg(tiny_cfg(repo_root, work, 2,
                                      'optim_wrapper.accumulative_counts=2'))
    runner.train()
    logs = glob.glob(str(work / '*' / '*.log'))
    assert len(logs) == 1, logs
    with open(logs[0]) as f:
        lines = [line for line in f if 'batch layout:' in line]
    assert len(lines) == 1 and lines[0].rstrip().endswith(
        'batch layout: 1 process x batch size 8 x 2 micro-batches per step (global 16)')


def test_a_missing_fid_reference_is_said_once_per_machine(tmp_path, monkeypatch, capsys,
                                                          waits):
    """tools/test.py under torchrun printed 'FID reference not found' from every
    process (a FileNotFoundError, which one process can meet alone)."""
    import tests.test_evaluation.tiny_extractors  # noqa: F401  (registers them)
    from mmsora.evaluation import FID
    fid = FID(extractor=dict(type='TinyImageExtractor'), reference=str(tmp_path / 'no.npz'))
    with pytest.raises(FileNotFoundError, match='FID reference not found'):
        fid.reference_stats()
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    assert run_cli(fid.reference_stats) == 2
    assert capsys.readouterr().err == ''
    _launch(monkeypatch, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')
    assert run_cli(fid.reference_stats) == 2
    assert 'FID reference not found' in capsys.readouterr().err


def test_a_missing_run_is_said_once_per_machine(tmp_path, monkeypatch, capsys, waits):
    """tools/infer.py RUN under torchrun printed 'no such config file or work dir'
    from every process."""
    from mmsora.apis.inference import find_run
    from mmsora.utils.cli import UserPathNotFound
    with pytest.raises(UserPathNotFound, match='no such config file or work dir'):
        find_run(str(tmp_path / 'nowhere'))
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    assert run_cli(lambda: find_run(str(tmp_path / 'nowhere'))) == 2
    assert capsys.readouterr().err == ''


def test_the_first_of_a_machine_after_slurms_variables_and_under_torchrun_in_a_job(
        monkeypatch):
    """compat._slurm_env sets LOCAL_RANK to the task's GPU, 0 for every task on a
    CPU-only partition: each task was 'first' and printed (review ag). torchrun's
    LOCAL_RANK comes first where torchrun runs inside a slurm job."""
    _launch(monkeypatch, SLURM_PROCID='3', SLURM_LOCALID='1', SLURM_NTASKS='4',
            RANK='3', LOCAL_RANK='0', WORLD_SIZE='4')
    assert not cli.is_first_on_machine()
    _launch(monkeypatch, SLURM_LOCALID='0', RANK='1', LOCAL_RANK='1', WORLD_SIZE='2',
            LOCAL_WORLD_SIZE='2')
    assert not cli.is_first_on_machine()
    _launch(monkeypatch, SLURM_LOCALID='0', RANK='0', LOCAL_RANK='0', WORLD_SIZE='2',
            LOCAL_WORLD_SIZE='2')
    assert cli.is_first_on_machine()


# ---------------------------------------------------------------------------
# Each process's lines in one write
# ---------------------------------------------------------------------------

class Writes(list):
    """A standard error that keeps each write apart (the launch's shared pipe)."""

    def write(self, text):
        self.append(text)
        return len(text)

    def flush(self):
        pass


def test_an_error_and_its_notes_reach_the_shared_stream_in_one_write(monkeypatch):
    # (two processes of a DeepSpeed save failing together printed text and newline
    # apart: 'error: ... againerror: ... again', one line where the user reads two)
    _launch(monkeypatch, RANK='1', LOCAL_RANK='1', WORLD_SIZE='2')
    error = RunError('cannot write checkpoint w/iter_2.pth: File too large')
    cli.add_note(error, 'the last checkpoint is w/iter_1.pth')
    writes = Writes()
    monkeypatch.setattr(cli.sys, 'stderr', writes)
    assert run_cli(_fails(error)) == 2
    assert writes == [f'error: {error}\nthe last checkpoint is w/iter_1.pth\n']


def test_an_interruption_and_a_note_are_one_write_each(monkeypatch):
    _launch(monkeypatch, RANK='0', LOCAL_RANK='0', WORLD_SIZE='2')
    writes = Writes()
    monkeypatch.setattr(cli.sys, 'stderr', writes)
    cli.note('the text encoder runs on the CPU')
    assert run_cli(_fails(KeyboardInterrupt())) == 130
    assert writes == ['note: the text encoder runs on the CPU\n', 'interrupted\n']
