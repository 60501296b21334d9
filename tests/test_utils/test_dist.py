"""mmsora.utils.dist: the collective device and the end of a distributed run (the
NCCL branches need GPUs and are not run here)."""
import torch
import torch.distributed as dist

from mmsora.utils.cli import UserError, run_cli
from mmsora.utils.dist import (abandon_process_group, barrier_device_ids,
                               close_process_group, collective_device, release_engine)


def _group(path):
    dist.init_process_group('gloo', init_method=f'file://{path}', rank=0, world_size=1)


def test_close_process_group_ends_a_run_and_is_harmless_outside_one(tmp_path):
    close_process_group()  # no group: nothing to do
    abandon_process_group()
    _group(tmp_path / 'store')
    try:
        assert collective_device() == torch.device('cpu')  # gloo
        assert barrier_device_ids() == {}
    finally:
        close_process_group()
    assert not dist.is_initialized()


def test_a_run_stopping_on_an_error_leaves_no_group_behind(tmp_path, capsys):
    def main():
        _group(tmp_path / 'store')
        raise UserError('bad option')
    assert run_cli(main) == 2
    assert 'error: bad option' in capsys.readouterr().err
    assert not dist.is_initialized()


def test_release_engine_destroys_a_deepspeed_engine_and_leaves_others():
    from types import SimpleNamespace
    destroyed = []
    engine = SimpleNamespace(destroy=lambda: destroyed.append(True))  # DeepSpeedEngine
    release_engine(SimpleNamespace(strategy=SimpleNamespace(model=engine)))
    assert destroyed == [True]
    release_engine(SimpleNamespace(model=torch.nn.Linear(1, 1)))  # a plain Runner
    release_engine(SimpleNamespace(strategy=SimpleNamespace(model=torch.nn.Linear(1, 1))))
    assert destroyed == [True]
