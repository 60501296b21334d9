"""check_gpu_per_process for srun's tasks (``--launcher slurm``): each task takes the
GPU of its index on its node (SLURM_LOCALID), so a node running more tasks than it has
GPUs is refused by every task of the node (the first says it: run_cli), where slurm
gives the step's tasks per node; else by the tasks past the GPUs. torchrun's side:
tests/test_datasets/test_extract_processes_per_gpu.py. The GPUs are stand-ins
(torch.cuda's count patched)."""
import os

import pytest
import torch

from mmsora.utils.cli import UserError
from mmsora.utils.dist import check_gpu_per_process, slurm_tasks_on_node

KEYS = ('LOCAL_WORLD_SIZE', 'LOCAL_RANK', 'WORLD_SIZE', 'RANK', 'CUDA_VISIBLE_DEVICES',
        'SLURM_LOCALID', 'SLURM_NODEID', 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_PROCID',
        'SLURM_NTASKS', 'SLURM_NODELIST', 'MASTER_ADDR', 'MASTER_PORT')


@pytest.fixture
def machine(monkeypatch):
    """Set up a machine of ``gpus`` CUDA devices (0: none) and this process's launch
    variables (only those given)."""
    def setup(gpus, **env):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
        for key in KEYS:  # (set first: what the code under test sets is taken off after)
            monkeypatch.setenv(key, '')
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
    return setup


def refusal():
    with pytest.raises(UserError) as info:
        check_gpu_per_process('--device cpu')
    return str(info.value)


@pytest.mark.parametrize('task', ['0', '3', '7'])
def test_more_tasks_on_a_node_than_gpus_are_refused_by_every_task(machine, task):
    """srun --ntasks-per-node 8 on 4-GPU nodes: tasks 4-7 of a node stopped in
    set_device (or, with LOCAL_RANK from SLURM_PROCID % 4, shared GPUs silently)."""
    machine(4, SLURM_LOCALID=task, SLURM_NODEID='1', SLURM_STEP_TASKS_PER_NODE='8(x2)',
            SLURM_PROCID=str(8 + int(task)))
    assert refusal() == (
        'started as 8 srun tasks on a node, each seeing 4 CUDA device(s): each task takes '
        'the GPU of its SLURM_LOCALID among those it sees; start 4 or fewer tasks per node '
        '(srun '
        "--ntasks-per-node 4), or let every task see all of the node's GPUs "
        '(--gres=gpu:8, without --gpus-per-task or --gpu-bind)')


def test_without_the_steps_layout_the_tasks_past_the_gpus_are_refused(machine):
    machine(2, SLURM_LOCALID='2', CUDA_VISIBLE_DEVICES='0,1')
    assert refusal() == (
        'started as srun task SLURM_LOCALID=2, which sees 2 CUDA device(s) '
        '(CUDA_VISIBLE_DEVICES=0,1): each task takes the GPU of its SLURM_LOCALID among '
        'those it sees; start 2 or fewer tasks per node (srun --ntasks-per-node 2), or '
        "let every task see all of the node's GPUs (--gres=gpu:N for N tasks per node, "
        'without --gpus-per-task or --gpu-bind)')
    machine(2, SLURM_LOCALID='1')
    check_gpu_per_process('--device cpu')


def test_this_nodes_count_is_read_from_an_uneven_layout(machine):
    """'4,8,2(x2)': node 1 runs 8 tasks, nodes 2 and 3 two each."""
    for node, tasks in (('0', 4), ('1', 8), ('2', 2), ('3', 2), ('4', None)):
        machine(4, SLURM_NODEID=node, SLURM_STEP_TASKS_PER_NODE='4,8,2(x2)')
        assert slurm_tasks_on_node() == tasks
    machine(4, SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='garbled')
    assert slurm_tasks_on_node() is None
    machine(4, SLURM_LOCALID='0', SLURM_NODEID='1', SLURM_STEP_TASKS_PER_NODE='4,8,2(x2)')
    assert refusal().startswith(
        'started as 8 srun tasks on a node, each seeing 4 CUDA device(s)')
    machine(4, SLURM_LOCALID='3', SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='4,8,2(x2)')
    check_gpu_per_process('--device cpu')


@pytest.mark.parametrize('gpus, env', [
    (4, dict(SLURM_LOCALID='3', SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='4(x2)')),
    (8, dict(SLURM_LOCALID='0', SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='4(x2)')),
    # a machine without CUDA: any number of tasks, on the CPU
    (0, dict(SLURM_LOCALID='7', SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='8')),
    # torchrun inside a slurm job: its processes are counted (srun started one task)
    (2, dict(SLURM_LOCALID='0', SLURM_STEP_TASKS_PER_NODE='1', LOCAL_WORLD_SIZE='2',
             LOCAL_RANK='1'))])
def test_tasks_that_fit_go_on(machine, gpus, env):
    machine(gpus, **env)
    check_gpu_per_process('--device cpu')


def test_torchrun_inside_a_slurm_job_is_told_of_torchrun(machine):
    machine(2, SLURM_LOCALID='0', SLURM_STEP_TASKS_PER_NODE='1', LOCAL_WORLD_SIZE='4',
            LOCAL_RANK='0')
    assert refusal().startswith('started as 4 processes on a machine of 2 CUDA device(s)')


def test_extract_features_under_srun_alone_is_refused_by_every_task(machine, monkeypatch):
    """tools/extract_features.py under srun (no --launcher: adopt_slurm_tasks) encoded on
    cuda:LOCAL_RANK, which was SLURM_PROCID % 4: 8 tasks on a 4-GPU node shared the GPUs
    two by two (task 5 with task 1) without a word."""
    from tests.extract_tools import extract
    for task in ('0', '5'):
        machine(4, SLURM_LOCALID=task, SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='8',
                SLURM_PROCID=task)
        for key, value in dict(SLURM_NTASKS='8', SLURM_NODELIST='node01',
                               MASTER_ADDR='127.0.0.1', MASTER_PORT='29500').items():
            monkeypatch.setenv(key, value)
        extract.adopt_slurm_tasks()
        assert os.environ['LOCAL_RANK'] == task
        with pytest.raises(UserError, match=r'^started as 8 srun tasks on a node, each seeing 4 CUDA'):
            extract.check_gpus_for_ranks('cuda')
        extract.check_gpus_for_ranks('cpu')  # (encoding on the CPU: any number)


def test_a_torchrun_style_start_in_srun_tasks_of_one_gpu_each_goes_on(machine):
    """srun --ntasks-per-node 4 --gpus-per-task 1, each task starting the tool itself
    with LOCAL_RANK=0 and --launcher pytorch: each sees its one GPU and takes device 0.
    Counted as srun's 4 tasks on a node of 1 GPU it was refused; with --launcher slurm
    (where mmengine sets device SLURM_LOCALID, past the one it sees) it still is."""
    machine(1, SLURM_LOCALID='3', SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='4',
            LOCAL_RANK='0', RANK='3', WORLD_SIZE='4', CUDA_VISIBLE_DEVICES='2')
    check_gpu_per_process('--device cpu', 'pytorch')
    with pytest.raises(UserError, match='started as 4 srun tasks on a node, each seeing '
                       r'1 CUDA device\(s\) \(CUDA_VISIBLE_DEVICES=2\)'):
        check_gpu_per_process('--device cpu', 'slurm')


@pytest.mark.parametrize('task', ['0', '5'])
def test_a_torchrun_style_start_in_srun_with_local_rank_of_the_task_counts_the_tasks(
        machine, task):
    """srun --ntasks-per-node 8 on 4-GPU nodes, each task starting the tool with
    --launcher pytorch and LOCAL_RANK=$SLURM_LOCALID: every task of the node refuses
    (tasks 0-3 were let through and waited for 4-7 at the rendezvous until it timed
    out); extract_features.py (no --launcher) alike."""
    machine(4, SLURM_LOCALID=task, SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='8',
            LOCAL_RANK=task, RANK=task, WORLD_SIZE='8')
    for launcher in ('pytorch', None):
        with pytest.raises(UserError, match='^started as 8 srun tasks on a node'):
            check_gpu_per_process('--device cpu', launcher)


def test_srun_tasks_of_one_gpu_each_with_local_rank_0_go_on_without_a_launcher(machine):
    """extract_features.py (no --launcher) in srun tasks of one GPU each, LOCAL_RANK=0
    and WORLD_SIZE set by hand: each encodes on cuda:0, its own (it was refused as 4
    tasks on a node of 1 GPU)."""
    machine(1, SLURM_LOCALID='3', SLURM_NODEID='0', SLURM_STEP_TASKS_PER_NODE='4',
            LOCAL_RANK='0', RANK='3', WORLD_SIZE='4', CUDA_VISIBLE_DEVICES='2')
    check_gpu_per_process('--device cpu')
