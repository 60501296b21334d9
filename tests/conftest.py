"""Shared test set-up.

Tests use one torch thread: their tensors are tiny, and on small CI machines
(2 cores) torch's intra-op threads cost far more than they save on such sizes.
"""
import os.path as osp

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture
def repo_root():
    return REPO_ROOT


@pytest.fixture
def malloc_calls(monkeypatch):
    """Record ``keep_freed_cpu_memory`` calls, made by tools run in the test process,
    instead of making them: they change the process for good. Subprocesses (torchrun,
    the benchmark's workers) make them for real. Returns the list of calls."""
    import mmsora.engine.strategies
    calls = []
    monkeypatch.setattr(mmsora.engine.strategies, 'keep_freed_cpu_memory',
                        lambda: calls.append(1) or True)
    return calls


@pytest.fixture
def kept_environ():
    """Put ``os.environ`` back as it was after the test: the tools run in the test
    process set variables for themselves (tools/train.py's parse_args sets LOCAL_RANK).
    Use it with ``pytestmark = pytest.mark.usefixtures('kept_environ')``."""
    import os
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
