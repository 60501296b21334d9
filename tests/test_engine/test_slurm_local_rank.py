"""``--launcher slurm``'s LOCAL_RANK (compat._slurm_env): the task's index on its node,
SLURM_LOCALID, the GPU mmengine's own slurm start gives ``torch.cuda.set_device``. It
was SLURM_PROCID modulo the GPU count: under cyclic task distribution two of a node's
tasks shared a GPU (tools/extract_features.py encoded on it), and on a CPU-only
partition every task was LOCAL_RANK 0. Only the variables are computed here (and
mmengine's start with its set_device and process group recorded, not made)."""
import os

import pytest
import torch
from mmengine.dist import utils as mmengine_dist

from mmsora.engine import compat

FILLED = ('MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK')


@pytest.fixture
def task(monkeypatch):
    """Set up srun's task ``proc`` of ``ntasks`` (``local``: its SLURM_LOCALID, None:
    slurm sets none) on a machine of ``gpus`` CUDA devices."""
    def setup(proc, ntasks, local, gpus):
        for key in FILLED:  # (set first, so that monkeypatch removes what _slurm_env adds)
            monkeypatch.setenv(key, 'x')
            monkeypatch.delenv(key)
        monkeypatch.setenv('MASTER_ADDR', '10.0.0.5')  # (no scontrol needed)
        monkeypatch.delenv('SLURM_JOB_ID', raising=False)
        monkeypatch.setenv('SLURM_NODELIST', 'node[01-02]')
        monkeypatch.setenv('SLURM_PROCID', str(proc))
        monkeypatch.setenv('SLURM_NTASKS', str(ntasks))
        if local is None:
            monkeypatch.delenv('SLURM_LOCALID', raising=False)
        else:
            monkeypatch.setenv('SLURM_LOCALID', str(local))
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
    return setup


def mmengines_device(monkeypatch):
    """The GPU mmengine's slurm start (Runner.setup_env's init_dist) sets for this task."""
    devices = []
    monkeypatch.setattr(mmengine_dist.torch.cuda, 'set_device', devices.append)
    monkeypatch.setattr(mmengine_dist.torch_dist, 'init_process_group',
                        lambda **kwargs: None)
    monkeypatch.setattr(mmengine_dist.subprocess, 'getoutput', lambda command: 'node01')
    mmengine_dist._init_dist_slurm('nccl')
    return devices[0]


def test_cyclic_tasks_take_their_nodes_gpus(task, monkeypatch):
    """srun --ntasks 8 --distribution cyclic on two 4-GPU nodes: node 2 runs tasks 1, 3,
    5, 7 (SLURM_LOCALID 0-3); SLURM_PROCID % 4 gave them GPUs 1, 3, 1, 3."""
    for proc, local in ((1, 0), (3, 1), (5, 2), (7, 3)):
        task(proc, 8, local, gpus=4)
        compat._slurm_env()
        assert (os.environ['LOCAL_RANK'], os.environ['RANK']) == (str(local), str(proc))
        assert mmengines_device(monkeypatch) == local  # the same GPU


def test_cpu_tasks_keep_their_index_on_the_node(task):
    task(5, 8, 1, gpus=0)
    compat._slurm_env()
    assert os.environ['LOCAL_RANK'] == '1'


@pytest.mark.parametrize('gpus, local_rank', [(4, '1'), (0, '0')])
def test_without_slurm_localid_the_task_number_modulo_the_gpus(task, monkeypatch, gpus,
                                                               local_rank):
    task(5, 8, None, gpus=gpus)
    compat._slurm_env()
    assert os.environ['LOCAL_RANK'] == local_rank
    if gpus:
        assert mmengines_device(monkeypatch) == int(local_rank)
