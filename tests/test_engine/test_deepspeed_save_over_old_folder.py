"""A DeepSpeed checkpoint saved again over the folder of an earlier save (ZeRO-2 on CPU,
torchrun, 2 gloo processes): after a ``--resume`` from ``iter_2.pth``, ``iter_4.pth`` is
saved again. DeepSpeed wrote its parts over the old ones: a write failing on process 1
left process 0's new parts beside process 1's cut-short one, the folder that
``last_checkpoint`` names and the line called intact. The new checkpoint now takes the
old one's place only once every process has written its part."""
import hashlib
import os
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('deepspeed')

from tests.launch import RUN, free_port, fresh_run_env  # noqa: E402
from tests.test_engine.test_deepspeed_failed_write_ranks import (  # noqa: E402
    LIMITED_RUN, TIMEOUT_S)
from tests.tiny_models import DEMO  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def train(work, *args, run=RUN):
    """tools/train.py on two torchrun processes, ZeRO-2, to iteration 4 with a
    checkpoint every 2."""
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(free_port()), '--monitor-interval', '5',
           '--no-python', sys.executable, '-c', run,
           osp.join(ROOT, 'tools/train.py'), osp.join(ROOT, DEMO),
           '--deepspeed', 'deepspeed_zero2', '--work-dir', str(work),
           '--launcher', 'pytorch', *args, '--cfg-options', 'train_cfg.max_iters=4',
           'default_hooks.checkpoint.interval=2', 'train_dataloader.num_workers=0',
           'train_dataloader.batch_size=4', 'model.denoiser.depth=1']
    return subprocess.run(cmd, env=fresh_run_env(PYTHONPATH=ROOT), cwd=work.parent,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


def contents(folder) -> dict:
    """Each file of ``folder`` (relative path) with its bytes' digest."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(osp.join(root, name), 'rb') as f:
                out[osp.relpath(osp.join(root, name), folder)] = \
                    hashlib.sha256(f.read()).hexdigest()
    return out


def hidden(work) -> list:
    return sorted(name for name in os.listdir(work) if name.startswith('.'))


def test_a_failed_save_over_an_old_folder_leaves_it_whole(tmp_path):
    work = tmp_path / 'w'
    first = train(work)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = work / 'iter_4.pth'
    old = contents(folder)
    assert sum(name.endswith('optim_states.pt') for name in old) == 2, old

    # process 1 cannot write its part (its file-size limit)
    failed = train(work, '--resume', str(work / 'iter_2.pth'), run=LIMITED_RUN)
    assert failed.returncode != 0, failed.stderr[-3000:]
    tail = (' (no partial file left); training stopped after iteration 4; the last '
            f'checkpoint is {folder} (intact): raise the file-size limit (ulimit -f), '
            f'then continue with --resume (--work-dir {work})')
    lines = sorted(line for line in failed.stderr.splitlines()
                   if line.startswith('error:'))
    assert lines == [
        f'error: cannot write checkpoint {folder}: File too large' + tail,  # process 1
        f'error: cannot write checkpoint {folder}: process 1 could not write its part: '
        'File too large' + tail], failed.stderr[-3000:]
    assert contents(folder) == old  # (was process 0's new parts and process 1's cut)
    assert hidden(work) == []

    # the same save with room replaces the folder, whole
    inode = os.stat(folder).st_ino
    again = train(work, '--resume', str(work / 'iter_2.pth'))
    assert again.returncode == 0, again.stderr[-3000:]
    assert os.stat(folder).st_ino != inode  # (a new folder, not the old one rewritten)
    assert contents(folder).keys() == old.keys()
    assert hidden(work) == []
