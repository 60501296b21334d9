"""Refuse a ``--resume`` that cannot continue a run exactly.

Which samples a step trains on depends on the number of processes, the batch size per
process and the micro-batches accumulated per optimizer step (each rank takes every
world_size-th index of the shuffled order, and the resumed loop skips the batches
already trained on). Resuming with another layout would silently train on other data
with another global batch size than the schedule was made for; mmengine 0.10.7's own
GPU-count check reads a key its checkpoints no longer hold. This hook saves the layout
with each checkpoint and stops a resume that differs, pointing at ``--load-from``
(weights only), which works with any layout.
"""
import functools
import os.path as osp
import subprocess

from mmengine.dist import get_world_size
from mmengine.hooks import Hook

import mmsora
from mmsora.engine.accumulation import accumulation_steps
from mmsora.registry import HOOKS
from mmsora.utils.cli import UserError

__all__ = ['ResumeCheckHook']


def run_layout(runner):
    """``dict(world_size, batch_size, dataset_size, accumulation)`` of a runner's
    training (``accumulation``: micro-batches per optimizer step)."""
    loader = runner.train_dataloader
    return dict(world_size=get_world_size(), batch_size=loader.batch_size,
                dataset_size=len(loader.dataset), accumulation=accumulation_steps(runner))


@functools.lru_cache(maxsize=None)
def mmsora_commit():
    """The git commit of the mmsora package folder's checkout, or None (an installed
    package, no git): looked up once per process."""
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=osp.dirname(mmsora.__file__),
                             capture_output=True, text=True, timeout=10)
    except Exception:  # (no git, or it hung: a save goes on without the commit)
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def layout_refusal(saved: dict, now: dict, checkpoint: str = 'CKPT'):
    """The one-line refusal of resuming a checkpoint of layout ``saved`` (its
    ``meta.run_layout``) in a run of layout ``now``, or None where they match: the
    hook's, and tools/train.py's before the Runner starts (``checkpoint``: the path
    the ``--load-from`` advice names, with another ``--work-dir``: tools/train.py
    refuses a new run into a work dir that holds checkpoints, the checkpoint's own
    among them). Checkpoints written before the accumulation was recorded are compared
    without it."""
    steps = saved.get('accumulation', now['accumulation'])
    if (saved['world_size'], saved['batch_size'], steps) == (
            now['world_size'], now['batch_size'], now['accumulation']):
        return None
    world, why = saved['world_size'], ''
    if world != now['world_size'] and world * saved['batch_size'] * steps == (
            now['world_size'] * now['batch_size'] * now['accumulation']):
        why = (f' (the global batch is the same, but the data order and the per-process RNG '
               f'states the checkpoint holds belong to {world} process{"es" * (world != 1)})')
    return (f'cannot resume: the checkpoint was saved by a run of {_describe(saved)}, '
            f'this run has {_describe(now)}; exact resume needs the same layout{why}: '
            f'relaunch with it, or go on from its weights with --load-from {checkpoint} and '
            'another --work-dir (its trained weights and EMA; the optimizer state and the '
            'data order start afresh, and the learning-rate schedule restarts from '
            'iteration 0)')


def _describe(layout):
    world, batch = layout['world_size'], layout['batch_size']
    accumulation = layout.get('accumulation', 1)
    steps = f' x {accumulation} micro-batches per step' if accumulation != 1 else ''
    return (f'{world} process{"es" if world != 1 else ""} x batch size {batch}{steps} '
            f'(global {world * batch * accumulation})')


@HOOKS.register_module()
class ResumeCheckHook(Hook):
    """Save the run's layout in checkpoints; refuse to resume with another one. Also
    puts the micro-batches per optimizer step in the message hub
    (``'accumulative_counts'``), where LatentDiffusion's per-sample draws read it.

    A different number of processes, batch size per process or number of
    micro-batches per optimizer step stops the resume with one line; a dataset of
    another length is allowed with a warning (the data order then differs from the
    uninterrupted run's). The layout is logged at the start of training, in the run's
    log file. Checkpoints also record the mmsora that wrote them (``meta.mmsora_version``,
    ``meta.mmsora_commit``: None outside a git checkout).
    """

    def before_train(self, runner):
        accumulation = accumulation_steps(runner)
        # The micro-batches per optimizer step, for whatever keys draws by step
        # (LatentDiffusion's train_noise_seed).
        # Not saved with checkpoints: each run states its own.
        runner.message_hub.update_info('accumulative_counts', accumulation, resumed=False)
        # tools/train.py prints how it split a global_batch_size on the terminal only:
        # the log file is where a run's global batch is looked up afterwards
        batch = runner.train_dataloader.batch_size  # (None with a batch_sampler)
        if batch is not None:
            runner.logger.info('batch layout: ' + _describe(dict(
                world_size=get_world_size(), batch_size=batch, accumulation=accumulation)))

    def before_save_checkpoint(self, runner, checkpoint):
        meta = checkpoint.setdefault('meta', {})
        meta['run_layout'] = run_layout(runner)
        # Which mmsora wrote it: a resume by another version can say what changed.
        meta['mmsora_version'] = mmsora.__version__
        meta['mmsora_commit'] = mmsora_commit()
        # The hub lists the key as not resumed; listed at all, mmengine's loader
        # warned at every resume that it is 'not defined in message_hub'.
        (checkpoint.get('message_hub') or {}).get('resumed_keys', {}).pop(
            'accumulative_counts', None)

    def after_load_checkpoint(self, runner, checkpoint):
        # Checkpoints saved before the key was dropped at save list it; mmengine's
        # resume (which reads the hub after this hook) warned that it is 'not defined
        # in message_hub' at each resume of one.
        (checkpoint.get('message_hub') or {}).get('resumed_keys', {}).pop(
            'accumulative_counts', None)
        saved = checkpoint.get('meta', {}).get('run_layout')
        if not runner._resume or saved is None:
            return
        now = run_layout(runner)
        refusal = layout_refusal(saved, now)
        if refusal:
            raise UserError(refusal)
        if 'accumulation' not in saved and now['accumulation'] > 1:
            runner.logger.warning(
                f'resuming a checkpoint written before mmsora recorded gradient '
                f'accumulation, with {now["accumulation"]} micro-batches per step: the '
                'EMA now moves once per optimizer step (it moved at every micro-batch); '
                'if the run divided its EMA momentum by that count, restore it')
        if saved['dataset_size'] != now['dataset_size']:
            runner.logger.warning(
                f'resuming on a dataset of {now["dataset_size"]} items; the checkpoint '
                f'was trained on {saved["dataset_size"]}: the data order differs from '
                'the uninterrupted run\'s')
