"""Hooks that tests register on a Runner to see what it holds at a given moment, or
what it ran (in-process, or through a config in the processes a launcher starts), and
one that signals the run at a given iteration."""
import json
import os
import os.path as osp

import torch
from mmengine.hooks import Hook

from mmsora.registry import HOOKS

__all__ = ['StateAtTrainStart', 'BlockRuns', 'probed_config', 'block_runs', 'SignalAt',
           'signalled_train']


class StateAtTrainStart(Hook):
    """Copies of the model's state dict and the optimizer's state as the first training
    iteration starts: after ``--load-from`` / ``--resume`` loaded a checkpoint and
    every hook's ``before_run`` / ``before_train`` ran."""
    priority = 'LOWEST'

    def __init__(self):
        self.weights = self.optimizer_state = None

    def before_train(self, runner):
        self.weights = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        self.optimizer_state = runner.optim_wrapper.state_dict()['state']

    def assert_weights(self, state_dict) -> None:
        """Every tensor of ``state_dict`` (a checkpoint's) is the model's, exactly."""
        assert state_dict
        for key, value in state_dict.items():
            assert torch.equal(self.weights[key], value), key


@HOOKS.register_module()
class BlockRuns(Hook):
    """Counts, over training, the runs of the denoiser's blocks (each forward, and each
    recomputation of a checkpointed block in the backward pass) and the calls into
    ``torch.utils.checkpoint.checkpoint`` (``selective``: those with the selective
    context); writes them to ``WORK_DIR/block_runs.RANK.json`` when training ends.
    Registered by a config made with :func:`probed_config`, so that it runs inside the
    processes a launcher starts (FSDP units, DeepSpeed's engine)."""
    priority = 'LOWEST'

    def before_train(self, runner):
        from mmsora.models.layers import checkpointing
        model = runner.model
        while hasattr(model, 'module'):  # DDP, FSDP, DeepSpeed's engine
            model = model.module
        self.counts = dict(block_runs=0, checkpoint_calls=0, selective=0)

        def count_run(module, args):
            self.counts['block_runs'] += 1

        for block in model.denoiser.blocks:  # an FSDP unit wraps the block
            getattr(block, '_fsdp_wrapped_module', block).register_forward_pre_hook(count_run)
        plain = checkpointing.checkpoint

        def counted(*args, **kwargs):
            self.counts['checkpoint_calls'] += 1
            self.counts['selective'] += kwargs.get('context_fn') is checkpointing._SELECTIVE
            return plain(*args, **kwargs)

        checkpointing.checkpoint = counted
        self.restore = lambda: setattr(checkpointing, 'checkpoint', plain)

    def after_train(self, runner):
        self.restore()
        rank = os.environ.get('RANK', '0')
        with open(osp.join(runner.work_dir, f'block_runs.{rank}.json'), 'w') as f:
            json.dump(self.counts, f)


def probed_config(config, folder) -> str:
    """A config file in ``folder``, named as ``config``, that is ``config`` with the
    :class:`BlockRuns` hook added to its custom hooks."""
    from mmengine.config import Config
    hooks = Config.fromfile(config).to_dict().get('custom_hooks', [])
    path = osp.join(str(folder), osp.basename(config))
    os.makedirs(str(folder), exist_ok=True)
    with open(path, 'w') as f:
        f.write(f"_base_ = [{osp.abspath(config)!r}]\n"
                "custom_imports = dict(imports=['tests.runner_probes'], "
                "allow_failed_imports=False)\n"
                f"custom_hooks = {hooks!r} + [dict(type='BlockRuns')]\n")
    return path


def block_runs(work_dir, processes) -> list:
    """Each rank's counts of :class:`BlockRuns`."""
    counts = []
    for rank in range(processes):
        with open(osp.join(str(work_dir), f'block_runs.{rank}.json')) as f:
            counts.append(json.load(f))
    return counts


class SignalAt(Hook):
    """Send ``signum`` to this process at the end of iteration ``at`` (1-based), as
    the iteration's own hooks run (an evaluation, say)."""

    priority = 'LOWEST'

    def __init__(self, at, signum):
        self.at, self.signum = at, signum

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), self.signum)


def signalled_train(repo_root, work_dir, max_iters, at, signum, *options):
    """Train the shrunk demo (:func:`tests.tiny_models.tiny_cfg`, ``options`` its extra
    --cfg-options) in this process under ``stop_gracefully``, as tools/train.py does,
    with ``signum`` sent at iteration ``at``.

    Returns:
        (the runner, the :class:`~mmsora.utils.cli.Interrupted` the run stopped with);
        fails unless it stopped so.
    """
    import pytest
    from mmengine.runner import Runner

    from mmsora.engine.graceful_stop import stop_gracefully
    from mmsora.utils.cli import Interrupted
    from tests.tiny_models import tiny_cfg
    runner = Runner.from_cfg(tiny_cfg(repo_root, work_dir, max_iters, *options))
    runner.register_hook(SignalAt(at, signum))
    restore = stop_gracefully(runner)
    try:
        with pytest.raises(Interrupted) as stopped:
            runner.train()
    finally:
        restore()
    return runner, stopped.value
