"""A training run that an error ends (another process killed, out of memory) said
nothing of where it stood: its traceback (gloo's 'Connection reset by peer' on
process 0 when another was killed) ended without the checkpoint to resume from,
which Ctrl-C and SIGTERM name. The traceback now ends with that line."""
import os.path as osp
import re
import sys

from tests.launch import run_tool
from tests.tiny_models import DEMO, TINY_TRAIN

# A user's hook (custom_imports, as an OpenMMLab user adds one) that fails as a
# collective does when another process has died.
HOOK = '''
from mmengine.hooks import Hook
from mmsora.registry import HOOKS


@HOOKS.register_module()
class PeerDies(Hook):
    def __init__(self, at):
        self.at = at

    def before_train(self, runner):  # at=0: the run's start fails
        if self.at == 0:
            raise RuntimeError('[gloo] Connection reset by peer')

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:  # (runner.iter counts it after its hooks)
            raise RuntimeError('[gloo] Connection reset by peer')
'''


def crashed_run(repo_root, tmp_path, at):
    (tmp_path / 'peer_dies.py').write_text(HOOK)
    config = tmp_path / 'crash.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, DEMO)!r}]\n"
                      "custom_imports = dict(imports=['peer_dies'])\n"
                      f"custom_hooks = [dict(type='PeerDies', at={at})]\n")
    work = tmp_path / 'w'
    result = run_tool([sys.executable, 'tools/train.py', str(config), '--work-dir', str(work),
                       '--cfg-options', *TINY_TRAIN, 'train_cfg.max_iters=20',
                       'default_hooks.checkpoint.interval=2'],
                      repo_root, timeout=300, PYTHONPATH=f'{tmp_path}:{repo_root}')
    assert result.returncode == 1, result.stderr[-3000:]
    return work, result.stderr.strip().splitlines()


def test_a_crash_ends_with_the_checkpoint_to_resume_from(repo_root, tmp_path):
    work, err = crashed_run(repo_root, tmp_path, 5)
    assert 'Connection reset by peer' in err[-2], err[-5:]
    assert re.fullmatch(
        rf'training stopped by this error after iteration 5; the last checkpoint is '
        rf'{work}/iter_4\.pth \(iteration 5 is not in it\): continue with --resume '
        rf'\(--work-dir {work}\)', err[-1]), err[-5:]


def test_a_crash_before_an_iteration_of_its_own_names_no_checkpoint(repo_root, tmp_path):
    """What fails before the first iteration is the run's start (the resume, the
    first batch), which --resume would only repeat: nothing is added."""
    work, err = crashed_run(repo_root, tmp_path, 0)
    assert 'Connection reset by peer' in err[-1], err[-5:]
    assert not any('training stopped' in line for line in err), err[-5:]
