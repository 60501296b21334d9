"""tools/extract_features.py under torchrun with more processes than the machine has
GPUs (the README's `--nproc_per_node 8` on a 4-GPU box): each rank encodes on the GPU
of its LOCAL_RANK, and the ranks past the GPUs stopped on CUDA's 'invalid device
ordinal' traceback in torch.cuda.set_device, after the source had been read, while the
others waited for them. The GPUs are stand-ins (torch.cuda's count patched)."""
import os
from unittest import mock

import pytest
import torch

from mmsora.utils.cli import UserError
from tests.extract_tools import extract, run_extract


@pytest.fixture
def gpus(monkeypatch):
    """A machine of ``n`` CUDA devices (0: none), as torch.cuda tells it."""
    def machine(n):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: n > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: n)
    return machine


@pytest.fixture
def torchrun():
    """The variables torchrun gives rank ``local_rank`` of ``local`` processes on this
    machine (``local=None``: a launcher that sets no LOCAL_WORLD_SIZE)."""
    with mock.patch.dict(os.environ):  # (undone after)
        for key in ('CUDA_VISIBLE_DEVICES', 'LOCAL_WORLD_SIZE', 'SLURM_NTASKS'):
            os.environ.pop(key, None)

        def launch(world, local_rank, local=None):
            os.environ.update(WORLD_SIZE=str(world), RANK=str(local_rank),
                              LOCAL_RANK=str(local_rank))
            os.environ.pop('LOCAL_WORLD_SIZE', None)
            if local is not None:
                os.environ['LOCAL_WORLD_SIZE'] = str(local)
        yield launch


def test_more_processes_than_gpus_is_refused_before_anything_is_read(
        gpus, torchrun, image_folder, tiny_vae_dir, tmp_path):
    gpus(2)
    torchrun(4, 3, local=4)
    with mock.patch.object(extract.dist, 'init_process_group'), \
            mock.patch.object(extract, 'build_source') as build_source, \
            pytest.raises(UserError) as info:
        run_extract(image_folder, str(tmp_path / 'store'), tiny_vae_dir, '--device', 'cuda')
    assert str(info.value) == (
        'started as 4 processes on a machine of 2 CUDA device(s): each process takes a GPU '
        'of its own; start 2 or fewer (torchrun --nproc_per_node 2), or run on the CPU '
        'with --device cpu')
    assert not build_source.called
    # every rank of the machine alike, the first too (it says it: run_cli)
    torchrun(4, 0, local=4)
    with pytest.raises(UserError, match='^started as 4 processes on a machine of 2 CUDA'):
        extract.check_gpus_for_ranks('cuda')
    # without LOCAL_WORLD_SIZE: the ranks past the GPUs, by their LOCAL_RANK
    os.environ['CUDA_VISIBLE_DEVICES'] = '0,1'
    torchrun(4, 2)
    with pytest.raises(UserError, match=r'^started as process LOCAL_RANK=2 on a machine of 2 '
                                        r'CUDA device\(s\) \(CUDA_VISIBLE_DEVICES=0,1\): '):
        extract.check_gpus_for_ranks('cuda')


@pytest.mark.parametrize('cuda, world, local, device', [
    (2, 2, 2, 'cuda'),    # one process per GPU
    (4, 2, 2, 'cuda'),    # fewer processes than GPUs
    (2, 4, 4, 'cpu'),     # CPU ranks on a GPU machine: any number
    (0, 4, 4, 'cpu'),     # a machine without CUDA: any number
    (1, 1, 1, 'cuda')])   # one process (no torchrun)
def test_processes_that_fit_go_on(gpus, torchrun, cuda, world, local, device):
    gpus(cuda)
    torchrun(world, local - 1, local=local)
    extract.check_gpus_for_ranks(device)



def test_one_gpu_named_for_every_rank_is_refused(gpus, torchrun):
    """--device cuda:0 with several ranks: each takes the GPU of its LOCAL_RANK, so the
    named one was not followed, without a word."""
    gpus(4)
    torchrun(2, 1, local=2)
    with pytest.raises(UserError) as info:
        extract.check_gpus_for_ranks('cuda:0')
    assert str(info.value).startswith(
        '--device cuda:0 under a launch of 2 processes: each process takes the GPU of its '
        'local rank, not one GPU for all (one named is for one process on each machine, '
        'where the launcher says so); give --device cuda (or no --device), and choose')
    torchrun(2, 0, local=1)  # one process on each of two machines: the GPU named
    extract.check_gpus_for_ranks('cuda:0')
