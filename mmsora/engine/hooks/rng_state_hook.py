"""Save and restore every RNG state with a checkpoint, so a resumed run draws the
same timesteps and noise as an uninterrupted one.

mmengine reseeds from ``randomness.seed`` on resume, which replays the noise of
iteration 0 rather than continuing it. The states are restored at the first
``before_train_iter`` after loading, i.e. after the train loop has built its data
iterator and skipped the batches already trained on (those steps may consume the
global RNG; our datasets use RNGs of their own).
"""
import random

import numpy as np
import torch
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

    priority = 'VERY_LOW'

    def __init__(self):
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint):
        checkpoint.setdefault('meta', {})['rng_states'] = get_rng_states()

    def after_load_checkpoint(self, runner, checkpoint):
        if runner._resume:
            self._pending = checkpoint.get('meta', {}).get('rng_states')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
