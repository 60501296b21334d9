"""A DeepSpeed checkpoint write that fails on one process of two (ZeRO-2 on CPU,
torchrun, gloo): every process stops at once with a line naming the failure. The
failing process raised from DeepSpeed's save while the other waited at DeepSpeed's
barrier until the collective timeout (30 minutes), then died without a word of the
checkpoint (or was killed by torchrun, without its line)."""
import os
import os.path as osp
import signal
import subprocess
import sys

import pytest

pytest.importorskip('deepspeed')

from tests.launch import RUN, free_port, fresh_run_env  # noqa: E402
from tests.tiny_models import DEMO  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# Process 1 may write files up to 200 kB (its ZeRO-2 partition of the optimizer state
# is larger); process 0's limit is far above its files (a job's ``ulimit -f``: the
# line's advice names the limit, as at process 1).
LIMITED_RUN = ("import os, resource; hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]; "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000 if os.environ['RANK'] "
               "== '1' else 1 << 30, hard)); " + RUN)
TIMEOUT_S = 240  # (the run takes well under it; the processes waited 30 minutes)


def test_a_write_failing_on_one_process_stops_every_process_with_its_line(tmp_path):
    work = tmp_path / 'w'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(free_port()),
           # (torchrun stops the other process once one has failed: give it the time
           # to say its line, as a launcher's grace does)
           '--monitor-interval', '5',
           '--no-python', sys.executable, '-c', LIMITED_RUN,
           osp.join(ROOT, 'tools/train.py'), osp.join(ROOT, DEMO),
           '--deepspeed', 'deepspeed_zero2', '--work-dir', str(work),
           '--launcher', 'pytorch', '--cfg-options', 'train_cfg.max_iters=2',
           'default_hooks.checkpoint.interval=2', 'train_dataloader.num_workers=0',
           'train_dataloader.batch_size=4', 'model.denoiser.depth=1']
    proc = subprocess.Popen(cmd, env=fresh_run_env(PYTHONPATH=ROOT), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # torchrun stops its workers
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f'still running after {TIMEOUT_S} s (a process waiting at '
                    f'DeepSpeed\'s barrier?):\n{err[-3000:]}')
    folder = work / 'iter_2.pth'
    assert proc.returncode != 0, err[-3000:]
    tail = (' (no partial file left); training stopped after iteration 2; no '
            'checkpoint was saved yet: raise the file-size limit (ulimit -f), then run '
            'the same command again')
    lines = sorted(line for line in err.splitlines() if line.startswith('error:'))
    assert lines == [
        f'error: cannot write checkpoint {folder}: File too large' + tail,  # process 1
        f'error: cannot write checkpoint {folder}: process 1 could not write its part: '
        'File too large' + tail], err[-3000:]
    # removed once both processes were done with it (left, with process 0's optimizer
    # states in it, it was taken for the last checkpoint: 'the last checkpoint is
    # W/iter_2.pth (intact)')
    assert not osp.exists(folder)
