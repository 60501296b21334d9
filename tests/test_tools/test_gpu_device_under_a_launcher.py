"""tools/test.py and tools/infer.py given a GPU with --device: under a launcher each
process takes the GPU of its local rank, so --device cuda:N (one GPU for every process)
with several processes on a machine is refused where test.py put all of them on GPU N
and infer.py gave each its own without a word (a machine's one process takes GPU N);
--device cuda is each process's own GPU, where test.py stopped on torch.cuda.set_device's
ValueError ('Expected a torch.device with a specified index'), its single process too.
The GPUs are stand-ins (torch.cuda patched), as in test_cpu_device_under_a_launcher.py,
whose fixture this file shares."""
import os.path as osp

import pytest
import torch

import mmsora.apis
import mmsora.apis.run_checks
from tests.cli_helpers import refused
from tests.test_tools.test_cpu_device_under_a_launcher import (  # noqa: F401 (fixture)
    CONFIG, EVALUATION, KEYS, MISSING, Started, argvs, launch)
from tools import test as test_tool


@pytest.mark.parametrize('launcher', ['pytorch', 'slurm'])
@pytest.mark.parametrize('tool', ['test', 'infer'])
def test_one_gpu_for_every_process_is_refused(launch, repo_root, tmp_path, launcher, tool):
    setup, record = launch
    setup(launcher, 2, 1)
    main, argv = argvs(repo_root, tmp_path, launcher, 'cuda:1')[tool]
    assert refused(main, argv) == (
        f'--device cuda:1 under --launcher {launcher}: each process takes the GPU of its '
        'local rank, not one GPU for all (one named is for one process on each machine, '
        'where the launcher says so); give --device cuda (or no --device), and choose '
        'the GPUs with CUDA_VISIBLE_DEVICES in front of the command (for GPUs 1 and 2: '
        'CUDA_VISIBLE_DEVICES=1,2)')
    assert record.backends == [] and record.devices == []  # refused before the start


@pytest.mark.parametrize('tool', ['test', 'infer'])
@pytest.mark.parametrize('device, processes, rank, used', [
    ('cuda', 2, 1, 1),      # each process its own GPU (test.py: set_device's ValueError)
    ('cuda:2', 1, 0, 2)])   # a machine's one process: the GPU named (infer.py took 0)
def test_the_gpu_each_process_samples_on(launch, repo_root, tmp_path, monkeypatch, tool,
                                         device, processes, rank, used):
    """The process group is made (a stand-in), then the model is built on the device
    the tool chose (stopped there). torch.cuda.set_device's stand-in reads the index as
    torch does: a device without one is a ValueError."""
    from torch._utils import _get_device_index
    setup, record = launch
    setup('pytorch', processes, rank)
    monkeypatch.setattr(torch.distributed, 'init_process_group',
                        lambda backend=None, **kwargs: record.backends.append(backend))
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda device: record.devices.append(_get_device_index(device)))
    loaded = []

    def init_model(*args, device=None, **kwargs):
        loaded.append(device)
        raise Started
    monkeypatch.setattr(mmsora.apis, 'init_model', init_model)
    main, argv = argvs(repo_root, tmp_path, 'pytorch', device)[tool]
    with pytest.raises(Started):
        main(argv)
    assert record.backends == ['nccl'] and loaded == [f'cuda:{used}']
    assert record.devices == [rank, used]  # (mmengine's start, then the tool's)


def test_one_process_given_device_cuda_samples_on_gpu_0(repo_root, monkeypatch,
                                                        malloc_calls):
    """(torch.cuda.set_device refuses a device without an index: the stand-in reads
    the index as torch does.)"""
    from torch._utils import _get_device_index
    for key in KEYS:
        monkeypatch.setenv(key, '')
        monkeypatch.delenv(key)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    devices, loaded = [], []
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda device: devices.append(_get_device_index(device)))
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config', lambda *a, **k: None)

    def init_model(*args, device=None, **kwargs):
        loaded.append(device)
        raise Started
    monkeypatch.setattr(mmsora.apis, 'init_model', init_model)
    with pytest.raises(Started):
        test_tool.main([osp.join(repo_root, CONFIG), MISSING, '--device', 'cuda',
                        '--evaluation', osp.join(repo_root, EVALUATION)])
    assert devices == [0] and loaded == ['cuda:0']


@pytest.mark.parametrize('env', [
    dict(LOCAL_RANK='0', WORLD_SIZE='2'),    # torchrun's count not told (no LOCAL_WORLD_SIZE)
    dict(SLURM_LOCALID='0', SLURM_PROCID='0', SLURM_NTASKS='2')])  # srun's not told
def test_a_gpu_is_named_for_one_process_only_where_the_launcher_says_so(monkeypatch, env):
    """Where the machine's count of processes is not told, process 0 counted itself
    alone and took GPU N while process 1 refused (process 0 then waited for it at the
    group's start): every process refuses alike."""
    from mmsora.utils.cli import UserError
    from mmsora.utils.dist import check_gpu_of_local_rank
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    launcher = 'slurm' if 'SLURM_LOCALID' in env else 'pytorch'
    with pytest.raises(UserError, match='^--device cuda:1 under --launcher'):
        check_gpu_of_local_rank('cuda:1', f'--launcher {launcher}', launcher)
    told = dict(LOCAL_WORLD_SIZE='1') if launcher == 'pytorch' else dict(
        SLURM_STEP_TASKS_PER_NODE='1(x2)', SLURM_NODEID='0')
    for key, value in told.items():  # (one process on each of two machines: told)
        monkeypatch.setenv(key, value)
    check_gpu_of_local_rank('cuda:1', f'--launcher {launcher}', launcher)


def test_every_machine_decides_alike_where_their_counts_differ(monkeypatch):
    """srun's step of 2 tasks on one node and 1 on the other: the node of one task took
    GPU N while the other refused, and its task waited for them at the group's start."""
    from mmsora.utils.cli import UserError
    from mmsora.utils.dist import check_gpu_of_local_rank
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in dict(SLURM_LOCALID='0', SLURM_PROCID='2', SLURM_NTASKS='3',
                           SLURM_STEP_TASKS_PER_NODE='2,1', SLURM_STEP_NODELIST='n[1-2]',
                           SLURMD_NODENAME='n2').items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match='^--device cuda:1 under --launcher slurm'):
        check_gpu_of_local_rank('cuda:1', '--launcher slurm', 'slurm')
    # torchrun: one process here, but more processes than machines in all
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in dict(LOCAL_RANK='0', LOCAL_WORLD_SIZE='1', WORLD_SIZE='3',
                           GROUP_WORLD_SIZE='2').items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match='^--device cuda:1 under --launcher pytorch'):
        check_gpu_of_local_rank('cuda:1', '--launcher pytorch', 'pytorch')
    monkeypatch.setenv('WORLD_SIZE', '2')  # (one on each of the two)
    check_gpu_of_local_rank('cuda:1', '--launcher pytorch', 'pytorch')
