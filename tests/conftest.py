"""Shared test set-up.

Tests use one torch thread: their tensors are tiny, and on small CI machines
(2 cores) torch's intra-op threads cost far more than they save on such sizes.
"""
import fnmatch
import importlib
import os.path as osp

import pytest
import torch

torch.set_num_threads(1)

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


class _HelperModule(pytest.File):
    """A helper module of tests/ (``runner_probes.py``, ``tiny_models.py``, ...) given
    on the command line, imported under the one name its importers use
    (``tests.runner_probes``). pytest's own import named it by its file alone
    (``runner_probes``): a second module, whose ``register_module`` ran a second time
    ('BlockRuns is already registered'). Helper modules hold no tests: collected, one
    is imported (an error in it is its collection error) and yields none; a plain
    ``pytest.File`` (public API) rather than a ``pytest.Module`` with its import
    replaced (``Module._getobj``, private)."""

    def collect(self):
        name = osp.splitext(osp.relpath(str(self.path), REPO_ROOT))[0]
        importlib.import_module(name.replace(osp.sep, '.'))
        return []


def pytest_pycollect_makemodule(module_path, parent):
    """The tests/ modules that are no test files (pytest collects those only when
    given their path) as :class:`_HelperModule` (a ``pytest.File``, not the Module
    that the hook's annotation names: pytest_collect_file, which calls it, takes any
    collector; a Module would import the file under pytest's name)."""
    test_file = any(fnmatch.fnmatch(module_path.name, pattern)
                    for pattern in parent.config.getini('python_files'))
    if not test_file and module_path.name != 'conftest.py':
        return _HelperModule.from_parent(parent, path=module_path)


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
def runs(monkeypatch):
    """tools/train.py runs in this process: their loggers, message hubs, visualizers
    and scopes are made anew and forgotten after the test (tests.cli_helpers)."""
    from collections import OrderedDict

    from tests.cli_helpers import forget_runs, run_instances
    for kind in run_instances():
        monkeypatch.setattr(kind, '_instance_dict', OrderedDict())
    yield forget_runs
    forget_runs()


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


@pytest.fixture
def fresh_notes(monkeypatch):
    """Notes said once a process (``note(..., once=True)``) said again in this test:
    an earlier test of the run may have said them. Use it with ``pytestmark =
    pytest.mark.usefixtures('fresh_notes')``."""
    from mmsora.utils import cli
    monkeypatch.setattr(cli, '_NOTED', set())


@pytest.fixture
def sdxl_like_vae(tmp_path):
    """A tiny random VAE folder whose scaling_factor is SDXL's 0.13025 (not SD's)."""
    from diffusers import AutoencoderKL

    from tests.tiny_models import TINY_VAE
    torch.manual_seed(0)
    path = tmp_path / 'sdxl_vae'
    AutoencoderKL(**TINY_VAE, scaling_factor=0.13025).save_pretrained(path)
    return str(path)


# Tiny model folders that tests only read, written once a session.
@pytest.fixture(scope='session')
def tiny_vae_dir(tmp_path_factory):
    """A tiny random SD-style VAE folder (``tests.tiny_models.TINY_VAE``)."""
    from diffusers import AutoencoderKL

    from tests.tiny_models import TINY_VAE
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('vae')
    AutoencoderKL(**TINY_VAE).save_pretrained(path)
    return str(path)


@pytest.fixture(scope='session')
def t5_dir(tmp_path_factory):
    """A tiny random T5 encoder folder with its word-level tokenizer (width 32)."""
    from tests.tiny_models import make_tiny_text_encoder
    return make_tiny_text_encoder(str(tmp_path_factory.mktemp('t5')), 't5')


@pytest.fixture(scope='session')
def clip_path(tmp_path_factory):
    """A tiny random CLIP text encoder with projection (width 32, pooled 16 wide)."""
    from tests.tiny_models import make_tiny_text_encoder
    return make_tiny_text_encoder(str(tmp_path_factory.mktemp('clip')),
                                  'clip_with_projection', width=32)
