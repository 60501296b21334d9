"""mmsora/engine/graceful_stop.py in one process: a signal during an iteration stops
the run after it (SIGTERM with that iteration saved), at the end of an accumulated
step, and never in the middle of a last iteration. The tools' side (exit codes, the
line printed, two processes under torchrun) is in
tests/test_tools/test_train_infer_cli.py."""
import signal

import torch
from mmengine.runner import Runner

from mmsora.engine.graceful_stop import stop_gracefully
from tests.runner_probes import SignalAt, signalled_train
from tests.tiny_models import tiny_cfg


def test_sigterm_saves_the_iteration_under_way(repo_root, tmp_path, capfd):
    former = signal.getsignal(signal.SIGTERM)
    runner, stopped = signalled_train(repo_root, tmp_path, 10, 3, signal.SIGTERM,
                                      'default_hooks.checkpoint.interval=1000')
    assert signal.getsignal(signal.SIGTERM) is former  # put back
    assert not [h for h in runner.hooks if type(h).__name__ == 'GracefulStopHook']
    assert stopped.exit_code == 143
    assert str(stopped) == (f'by SIGTERM after iteration 3; the last checkpoint is '
                            f'{tmp_path}/iter_3.pth: continue with --resume (--work-dir '
                            f'{tmp_path})')
    saved = torch.load(tmp_path / 'iter_3.pth', map_location='cpu', weights_only=False)
    assert saved['meta']['iter'] == 3 and 'rng_states' in saved['meta']
    assert sorted(p.name for p in tmp_path.glob('iter_*.pth')) == ['iter_3.pth']
    assert 'SIGTERM: saving a checkpoint and stopping after this iteration' \
        in capfd.readouterr().err


def test_ctrl_c_saves_only_a_due_checkpoint(repo_root, tmp_path):
    former = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    _, stopped = signalled_train(repo_root, tmp_path, 10, 3, signal.SIGINT,
                                 'default_hooks.checkpoint.interval=2')
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == former
    assert stopped.exit_code == 130
    assert str(stopped).startswith(f'after iteration 3; the last checkpoint is '
                                   f'{tmp_path}/iter_2.pth')
    assert not (tmp_path / 'iter_3.pth').exists()


def test_an_accumulated_step_is_finished_first(repo_root, tmp_path):
    """Stopping inside a step of 2 micro-batches would save a checkpoint a resume
    cannot continue exactly from (the accumulated gradients are not saved)."""
    _, stopped = signalled_train(repo_root, tmp_path, 10, 3, signal.SIGTERM,
                                 'optim_wrapper.accumulative_counts=2',
                                 'default_hooks.checkpoint.interval=1000')
    assert str(stopped).startswith('by SIGTERM after iteration 4; the last checkpoint is '
                                   f'{tmp_path}/iter_4.pth')


def test_a_signal_in_the_last_iteration_lets_the_run_end(repo_root, tmp_path):
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 3,
                                      'default_hooks.checkpoint.interval=1000'))
    runner.register_hook(SignalAt(3, signal.SIGTERM))
    restore = stop_gracefully(runner)
    try:
        runner.train()  # no Interrupted: the run was complete
    finally:
        restore()
    assert runner.iter == 3 and (tmp_path / 'iter_3.pth').is_file()


def test_a_process_forked_by_the_run_still_ends_on_sigterm(repo_root, tmp_path):
    """The handler is inherited by a fork: a child of the run's own (a pool started by
    a hook) ignored every SIGTERM, terminate() included (review of this module)."""
    import multiprocessing
    import time
    runner = Runner.from_cfg(tiny_cfg(repo_root, tmp_path, 2))
    restore = stop_gracefully(runner)
    try:
        child = multiprocessing.get_context('fork').Process(target=time.sleep, args=(60,))
        child.start()
        time.sleep(1)  # (CPython drops a handled signal that comes as it forks)
        child.terminate()
        child.join(timeout=20)
        assert child.exitcode == -signal.SIGTERM
    finally:
        if child.is_alive():
            child.kill()
        restore()
