"""SIGTERM in the tools run through run_cli (walk-through: ``timeout -s TERM 15 python
tools/text2video.py long.txt --out o2/s.mp4`` died of the signal with no line and left
a 48-byte ``s.mp4.part.mp4``, where Ctrl-C removed it and said the video there before
was kept). SIGTERM is what timeout, docker stop, systemd and slurm send: it now runs
the same cleanup as Ctrl-C and ends with one line and exit 143; a handler of the
tool's own (training's graceful stop) wins; forked children end on it as before."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mmsora.utils.cli import Interrupted, run_cli

SENTENCES = ('A small robot wakes up in an empty workshop and looks around. '
             'It finds a lamp, a map and a broken bicycle near the door. ')


def _start(args, repo_root, tmp_path, **env):
    """Start ``args`` in the repository with stdout and stderr to files (a pipe could
    fill and block it). Returns (process, stdout file, stderr file)."""
    out, err = tmp_path / 'stdout.txt', tmp_path / 'stderr.txt'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(repo_root), **env}
    with open(out, 'w') as stdout, open(err, 'w') as stderr:
        proc = subprocess.Popen(args, cwd=repo_root, env=env, stdout=stdout,
                                stderr=stderr)
    return proc, out, err


def _wait_for(ready, proc, err, timeout=120):
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, err.read_text()[-3000:]
        assert time.time() < deadline, f'not ready within {timeout} s'
        time.sleep(0.05)


def _script(tmp_path, body):
    """A tool in ``tmp_path`` whose ``main`` is ``body``, run through run_cli."""
    path = tmp_path / 'tool.py'
    path.write_text('import os, signal, sys, time\n'
                    'from mmsora.utils.cli import Interrupted, UserError, run_cli\n\n\n'
                    'def main():\n' + textwrap.indent(textwrap.dedent(body), '    ')
                    + '\n\nsys.exit(run_cli(main))\n')
    return [sys.executable, str(path)]


def test_text2video_stopped_by_sigterm_keeps_the_video_there_before(repo_root, tmp_path):
    text, out = tmp_path / 'long.txt', tmp_path / 'o2' / 's.mp4'
    text.write_text(SENTENCES * 25)
    out.parent.mkdir()
    out.write_bytes(b'the video there before')
    part = tmp_path / 'o2' / 's.mp4.part.mp4'
    proc, _, err = _start([sys.executable, 'tools/text2video.py', str(text), '--out',
                           str(out), '--speech', 'none', '--resolution', '320x180'],
                          repo_root, tmp_path)
    try:
        _wait_for(lambda: 'video frames' in err.read_text() and part.exists(), proc, err)
        time.sleep(0.3)  # some frames written
        proc.send_signal(signal.SIGTERM)  # (as timeout sends it: to the tool alone)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    said = err.read_text()
    assert code == 143, said[-3000:]
    assert 'Traceback' not in said, said[-3000:]
    assert said.replace('\r', '\n').strip().splitlines()[-1] == (
        f'interrupted by SIGTERM ({out} not written: the file there before is kept)')
    assert not part.exists()
    assert out.read_bytes() == b'the video there before'


def test_the_cleanup_runs_once_and_forked_children_end_as_before(repo_root, tmp_path):
    """The KeyboardInterrupt's cleanup runs; the SIGTERMs a launcher passes on after
    the first do not break it off; a child the tool forks dies of SIGTERM as without
    the handler (it neither raises nor takes the tool's cleanup)."""
    done = tmp_path / 'cleaned'
    tool = _script(tmp_path, f'''
        ready, started = os.pipe()
        child = os.fork()
        if child == 0:  # (a data-loader worker before torch sets its handlers)
            os.write(started, b'1')
            time.sleep(60)
            os._exit(0)
        os.read(ready, 1)  # (one at the fork itself is lost: Python clears it there)
        os.kill(child, signal.SIGTERM)
        status = os.waitpid(child, 0)[1]
        print(f'child signalled {{os.WIFSIGNALED(status) and os.WTERMSIG(status)}}',
              flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print('cleaning', flush=True)
            time.sleep(1)  # the SIGTERMs passed on come here
            open({str(done)!r}, 'w').write('done')
            raise Interrupted('(cleaned up)') from None
    ''')
    proc, out, err = _start(tool, repo_root, tmp_path)
    try:
        _wait_for(lambda: 'child signalled' in out.read_text(), proc, err)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _wait_for(lambda: 'cleaning' in out.read_text(), proc, err)
        for _ in range(2):
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert out.read_text().splitlines()[0] == f'child signalled {int(signal.SIGTERM)}'
    assert (code, err.read_text()) == (143, 'interrupted by SIGTERM (cleaned up)\n')
    assert done.read_text() == 'done'


def test_the_launchers_sigterm_ends_the_wait_after_a_mistake(repo_root, tmp_path):
    """A process that is not the first of its machine waits, without a word, for the
    launcher to stop it after a UserError: its SIGTERM ends the wait (exit 2); it
    killed the process before, with nothing of run_cli's to say so."""
    tool = _script(tmp_path, '''
        print('ready', flush=True)
        raise UserError('--labels [7] out of range: the model has 4 classes')
    ''')
    proc, out, err = _start(tool, repo_root, tmp_path, RANK='1', LOCAL_RANK='1',
                            WORLD_SIZE='2', LOCAL_WORLD_SIZE='2')
    try:
        _wait_for(lambda: 'ready' in out.read_text(), proc, err)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)  # (the wait is 30 s)
    finally:
        proc.kill()
    assert (code, err.read_text()) == (2, '')


@pytest.fixture
def sigterm_default():
    """SIGTERM's default action here, put back after the test whatever it set."""
    former = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, former)


def test_a_handler_of_the_tools_own_wins_and_the_default_is_put_back(sigterm_default):
    got = []

    def main():
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # run_cli's
        former = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # (the handler runs at the next bytecode; this to be sure)
        signal.signal(signal.SIGTERM, former)

    assert run_cli(main) == 0
    assert got == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigterm_ignored_or_set_by_the_tool_is_left_so(sigterm_default):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (nohup-like: whoever started it)
    assert run_cli(lambda: None) == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def main():  # as tools/train.py after a SIGTERM's stop: further ones ignored
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    assert run_cli(main) == 0
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_trainings_graceful_stop_wins(repo_root, tmp_path, capfd, sigterm_default):
    """tools/train.py installs its handler under run_cli's: a SIGTERM saves the
    iteration and stops with training's own line and exit code."""
    from tests.runner_probes import signalled_train

    def main():
        _, stopped = signalled_train(repo_root, tmp_path, 10, 3, signal.SIGTERM,
                                     'default_hooks.checkpoint.interval=1000')
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL  # run_cli's, back
        raise stopped

    assert run_cli(main) == 143
    assert capfd.readouterr().err.splitlines()[-1] == (
        f'interrupted by SIGTERM after iteration 3; the last checkpoint is '
        f'{tmp_path}/iter_3.pth: continue with --resume (--work-dir {tmp_path})')
    assert (tmp_path / 'iter_3.pth').is_file()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_interrupted_keeps_its_own_exit_code_without_sigterm(sigterm_default, capsys):
    def main():
        raise Interrupted('(kept)')

    assert run_cli(main) == 130
    assert capsys.readouterr().err == 'interrupted (kept)\n'
