"""Save and restore every RNG state with a checkpoint, so a resumed run draws the
same timesteps and noise as an uninterrupted one.

mmengine reseeds from ``randomness.seed`` on resume, which replays the noise of
iteration 0 rather than continuing it. Every process has its own states (with
``randomness.diff_rank_seed=True`` each process draws different timesteps and noise,
as DiT seeds ``seed * world_size + rank``): mmengine saves from process 0 only, so
at the iterations where CheckpointHook will save, every process hands its states to
process 0 first (this hook runs before CheckpointHook), and on resume each process
restores its own. The states are restored at the first
``before_train_iter`` after loading, i.e. after the train loop has built its data
iterator and skipped the batches already trained on (those steps may consume the
global RNG; our datasets use RNGs of their own).
"""
import random

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook

from mmsora.registry import HOOKS


def get_rng_states():
    """The global python, numpy, torch (and CUDA, when present) RNG states."""
    states = dict(python=random.getstate(), numpy=np.random.get_state(),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Inverse of :func:`get_rng_states`."""
    random.setstate(_as_python_state(states['python']))
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def _as_python_state(state):
    # random.getstate() is (version, tuple_of_ints, gauss_next); a checkpoint loaded
    # with weights_only may return the inner tuple as a list.
    version, internal, gauss = state
    return version, tuple(internal), gauss


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Put the global RNG states in checkpoints and restore them on resume."""

    priority = 'LOW'  # before CheckpointHook (VERY_LOW) in after_train_iter

    def __init__(self):
        self._pending = None
        self._gathered = None

    def gather(self, runner):
        """Hand every process's states to process 0 for the checkpoint it saves next.
        Collective: every process takes part (a stop on SIGTERM calls it before the
        checkpoint it saves, mmsora/engine/graceful_stop.py)."""
        if get_world_size() > 1:
            self._gathered = all_gather_object(get_rng_states())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        from mmsora.engine.graceful_stop import checkpoint_due
        if checkpoint_due(runner):  # before process 0 alone saves
            self.gather(runner)

    def before_save_checkpoint(self, runner, checkpoint):
        # Runs on process 0 only (Runner.save_checkpoint is master_only).
        states, self._gathered = self._gathered or get_rng_states(), None
        checkpoint.setdefault('meta', {})['rng_states'] = states

    def after_load_checkpoint(self, runner, checkpoint):
        if not runner._resume:
            return
        states = checkpoint.get('meta', {}).get('rng_states')
        if isinstance(states, (list, tuple)):  # saved by several processes
            rank = get_rank()
            if len(states) != get_world_size():
                raise RuntimeError(
                    f'the checkpoint holds the RNG states of {len(states)} processes but '
                    f'this run has {get_world_size()}: resume with the same number of '
                    'processes, or start a new run from its weights with --load-from')
            states = states[rank]
        self._pending = states

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
