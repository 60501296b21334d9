"""tools/train.py, tools/test.py and tools/infer.py launched with more processes on a
machine than it has GPUs: torchrun --nproc_per_node 4 on 2 GPUs, or srun
--ntasks-per-node 8 on 4-GPU nodes (--launcher slurm). Each process past the GPUs
stopped on CUDA's 'invalid device ordinal' traceback in mmengine's
torch.cuda.set_device, while the others waited for it. They refuse in one line, said by
the machine's first process, before any config, model or process group is built. The
GPUs are stand-ins (torch.cuda's count patched)."""
import os.path as osp

import pytest
import torch

import mmsora.apis
import mmsora.apis.run_checks
from mmsora.utils.cli import run_cli
from tests.cli_helpers import refused
from tests.tiny_models import DEMO
from tools import infer
from tools import test as test_tool
from tools import train

CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
EVALUATION = 'configs/_base_/evaluation/fid50k_imagenet256.py'
MISSING = '/nonexistent/iter_10.pth'  # never read: refused before
KEYS = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'CUDA_VISIBLE_DEVICES',
        'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST', 'SLURM_LOCALID', 'SLURM_NODEID',
        'SLURM_STEP_TASKS_PER_NODE', 'MASTER_ADDR', 'MASTER_PORT')
TORCHRUN = ('started as 4 processes on a machine of 2 CUDA device(s): each process takes a '
            'GPU of its own; start 2 or fewer (torchrun --nproc_per_node 2), or run on the '
            'CPU with CUDA_VISIBLE_DEVICES= in front of the command (torch then sees no GPU)')
# test.py and infer.py have their own way to the CPU, --device cpu (they offered
# CUDA_VISIBLE_DEVICES=, tools/train.py's)
SAMPLING = TORCHRUN.replace('CUDA_VISIBLE_DEVICES= in front of the command (torch then sees '
                            'no GPU)', '--device cpu (the processes then join over gloo)')
SRUN = ('started as 8 srun tasks on a node, each seeing 4 CUDA device(s): each task '
        'takes the GPU of its SLURM_LOCALID among those it sees; start 4 or fewer tasks '
        'per node (srun '
        "--ntasks-per-node 4), or let every task see all of the node's GPUs (--gres=gpu:8, "
        'without --gpus-per-task or --gpu-bind)')


@pytest.fixture
def launch(monkeypatch):
    """Set up process ``rank`` of a launch on a GPU machine: torchrun's 4 processes on 2
    GPUs, or srun's 8 tasks on each of two 4-GPU nodes (this one on node 1). Building a
    config, a model or a process group fails."""
    def setup(launcher, rank=0):
        for key in KEYS:  # (set first: what the tool sets is taken off again after)
            monkeypatch.setenv(key, '')
            monkeypatch.delenv(key)
        if launcher == 'pytorch':
            gpus, env = 2, dict(WORLD_SIZE=4, LOCAL_WORLD_SIZE=4, RANK=rank, LOCAL_RANK=rank,
                                MASTER_ADDR='127.0.0.1', MASTER_PORT=29500)
        else:
            gpus, env = 4, dict(SLURM_PROCID=8 + rank, SLURM_NTASKS=16, SLURM_LOCALID=rank,
                                SLURM_NODEID=1, SLURM_STEP_TASKS_PER_NODE='8(x2)',
                                SLURM_NODELIST='node[01-02]', MASTER_ADDR='10.0.0.5')
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)

    def built(*args, **kwargs):
        raise AssertionError('a config, a model or a process group was built')
    monkeypatch.setattr(train, 'build_train_config', built)
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config', built)
    monkeypatch.setattr(mmsora.apis, 'init_model', built)
    monkeypatch.setattr(mmsora.apis, 'init_sampling_processes', built)
    return setup


def argvs(repo_root, tmp_path, launcher):
    """Each tool's command line under ``--launcher launcher``."""
    config = osp.join(repo_root, CONFIG)
    return {
        train.main: [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'w'),
                     '--launcher', launcher],
        test_tool.main: [config, MISSING, '--launcher', launcher, '--evaluation',
                         osp.join(repo_root, EVALUATION)],
        infer.main: [config, '--checkpoint', MISSING, '--out', str(tmp_path / 's.npz'),
                     '--launcher', launcher]}


@pytest.mark.parametrize('launcher, message', [('pytorch', TORCHRUN), ('slurm', SRUN)])
@pytest.mark.parametrize('tool', ['train', 'test', 'infer'])
@pytest.mark.parametrize('first', [True, False])
def test_more_processes_than_gpus_are_refused_before_anything_is_built(
        launch, repo_root, tmp_path, launcher, message, tool, first):
    """Every process of the machine alike: the first, and one past the GPUs."""
    launch(launcher, 0 if first else 3 if launcher == 'pytorch' else 5)
    main = {'train': train.main, 'test': test_tool.main, 'infer': infer.main}[tool]
    if tool != 'train':  # (srun's tasks: CUDA_VISIBLE_DEVICES= is no way to the CPU there)
        message = SAMPLING if message == TORCHRUN else \
            f'{SRUN}, or run on the CPU with --device cpu (the processes then join over gloo)'
    assert refused(main, argvs(repo_root, tmp_path, launcher)[main]) == message
    assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('launcher', ['pytorch', 'slurm'])
def test_the_first_process_of_the_machine_says_it_at_once(launch, repo_root, tmp_path,
                                                          monkeypatch, capsys, launcher):
    slept = []
    monkeypatch.setattr('time.sleep', slept.append)
    argv = argvs(repo_root, tmp_path, launcher)[train.main]
    launch(launcher, 0)
    assert run_cli(lambda: train.main(argv)) == 2
    assert slept == []
    assert capsys.readouterr().err == f'error: {TORCHRUN if launcher == "pytorch" else SRUN}\n'


@pytest.mark.parametrize('tool', ['train', 'test', 'infer'])
def test_as_many_processes_as_gpus_go_on(launch, repo_root, tmp_path, monkeypatch, tool):
    launch('slurm', 3)
    monkeypatch.setenv('SLURM_STEP_TASKS_PER_NODE', '4(x4)')
    main = {'train': train.main, 'test': test_tool.main, 'infer': infer.main}[tool]
    with pytest.raises(AssertionError, match='was built'):
        main(argvs(repo_root, tmp_path, 'slurm')[main])
