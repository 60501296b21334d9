"""torch's deprecation of the collectives DeepSpeed's ZeRO calls came back at every
step (DeepSpeed's CPU accelerator runs ``numactl`` in a subprocess at every gradient
reduction, and ``subprocess`` wipes Python's record of the warnings shown): a
ZeRO-3 run keeps them out of the log, and other FutureWarnings still show."""
import os.path as osp
import subprocess
import sys
import warnings

import pytest

pytest.importorskip('deepspeed')

from mmsora.engine.strategies import mend_mmengine_deepspeed  # noqa: E402
from tests.launch import RUN, fresh_run_env  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')

# tools/train.py in this process, then two FutureWarnings of our own: a plain one and
# another deprecation of torch.distributed's, which must still be shown.
AFTER_TRAINING = """
try:
    {run}
except SystemExit as stop:
    assert not stop.code, stop.code
import warnings
warnings.warn('another FutureWarning', FutureWarning)
warnings.warn_explicit('`torch.distributed.all_reduce_coalesced` will be deprecated.',
                       FutureWarning, 'distributed_c10d.py', 1,
                       module='torch.distributed.distributed_c10d')
"""


def test_zero3_shows_the_collectives_deprecation_at_most_once(tmp_path):
    script = AFTER_TRAINING.format(run=RUN.replace('; ', '\n    '))
    cmd = [sys.executable, '-c', script, osp.join(ROOT, 'tools/train.py'), DEMO,
           '--deepspeed', 'deepspeed_zero3', '--work-dir', str(tmp_path / 'run'),
           '--cfg-options', 'train_cfg.max_iters=3', 'default_hooks.logger.interval=1',
           'default_hooks.checkpoint.interval=100', 'train_dataloader.num_workers=0',
           'train_dataloader.batch_size=4', 'model.denoiser.depth=1']
    env = fresh_run_env(PYTHONPATH=ROOT)
    # the user's own warning options turn the filter off; LOCAL_SIZE would spare
    # DeepSpeed the numactl subprocess (the warnings then showed once without it)
    for name in ('PYTHONWARNINGS', 'LOCAL_SIZE'):
        env.pop(name, None)
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert 'Iter(train) [3/3]' in log
    for name in ('all_gather_into_tensor', 'reduce_scatter_tensor'):
        # without the filter: about one a step each
        assert log.count(f'`torch.distributed.{name}` is deprecated') <= 1, log[-3000:]
    assert 'FutureWarning: another FutureWarning' in log
    assert 'FutureWarning: `torch.distributed.all_reduce_coalesced` will be' in log


def test_warning_options_of_the_user_are_kept(monkeypatch):
    with warnings.catch_warnings():
        monkeypatch.setattr(sys, 'warnoptions', ['error::FutureWarning'])
        before = list(warnings.filters)
        mend_mmengine_deepspeed()
        assert warnings.filters == before
        monkeypatch.setattr(sys, 'warnoptions', [])
        mend_mmengine_deepspeed()
        action, message, category, module, _ = warnings.filters[0]
        assert (action, category) == ('ignore', FutureWarning)
        assert warnings.filters[1:] == before
        assert message.match('`torch.distributed.reduce_scatter_tensor` is deprecated.')
        assert not message.match('`torch.distributed.all_reduce_coalesced` will be')
        assert module.match('torch.distributed.c10d_logger')
