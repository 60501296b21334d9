"""A DeepSpeed save (ZeRO-2, one process on CPU) that fails over the folder of an
earlier save other than the one ``last_checkpoint`` names (resumed from iter_2.pth
while iter_6.pth is the last): the save is written beside the old folder and put in
its place only when whole (deepspeed_save.py), so the old folder is whole; the hook's
cleanup of a failed save then removed it as a partial one, and a checkpoint was lost."""
import os.path as osp
import resource
import subprocess
import sys

import pytest

pytest.importorskip('deepspeed')

from tests.launch import RUN, fresh_run_env  # noqa: E402
from tests.test_engine.test_deepspeed_save_over_old_folder import contents  # noqa: E402
from tests.tiny_models import DEMO  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def train(work, *args, limit=None):
    cmd = [sys.executable, '-c', RUN, osp.join(ROOT, 'tools/train.py'),
           osp.join(ROOT, DEMO), '--deepspeed', 'deepspeed_zero2', '--work-dir', str(work),
           *args, '--cfg-options', 'train_cfg.max_iters=6',
           'default_hooks.checkpoint.interval=2', 'default_hooks.checkpoint.max_keep_ckpts=-1',
           'train_dataloader.num_workers=0',
           'train_dataloader.batch_size=4', 'model.denoiser.depth=1']

    def limit_file_size():  # (in the child only; its logs are smaller)
        if limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return subprocess.run(cmd, env=fresh_run_env(PYTHONPATH=ROOT), cwd=work.parent,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size)


def test_a_failed_save_keeps_the_older_folder_it_was_to_replace(tmp_path):
    work = tmp_path / 'w'
    first = train(work)
    assert first.returncode == 0, first.stderr[-3000:]
    old = contents(work / 'iter_4.pth')
    assert old and osp.isdir(work / 'iter_6.pth')
    again = train(work, '--resume', str(work / 'iter_2.pth'), limit=200_000)
    assert again.returncode == 2, again.stderr[-3000:]
    assert f'cannot write checkpoint {work}/iter_4.pth: File too large' in again.stderr, \
        again.stderr[-3000:]
    assert contents(work / 'iter_4.pth') == old  # (was removed as a partial folder)
