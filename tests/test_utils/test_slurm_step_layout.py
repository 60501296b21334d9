"""slurm_tasks_on_node: how many tasks of an srun step run on this node, read with the
environment srun gives its tasks. SLURM_STEP_TASKS_PER_NODE counts in the order of
SLURM_STEP_NODELIST; this node's entry is the one of its name, SLURMD_NODENAME. It was
read at SLURM_NODEID, which a heterogeneous step's tasks get counted in component
order (slurmstepd: ``nodeid + het_job_node_offset``) while srun sorts that step's node
list and tasks per node by name (srun.c ``_reorder_het_job_recs``): another node's
count, a false refusal of the step or a missed one. The GPUs are stand-ins
(torch.cuda's count patched)."""
import pytest
import torch

from mmsora.utils.cli import UserError
from mmsora.utils.dist import check_gpu_per_process, slurm_host_names, slurm_tasks_on_node

KEYS = ('LOCAL_WORLD_SIZE', 'LOCAL_RANK', 'WORLD_SIZE', 'RANK', 'CUDA_VISIBLE_DEVICES',
        'SLURM_LOCALID', 'SLURM_NODEID', 'SLURM_STEP_TASKS_PER_NODE', 'SLURM_PROCID',
        'SLURM_NTASKS', 'SLURM_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_STEP_NODELIST',
        'SLURMD_NODENAME', 'SLURM_STEP_NUM_NODES', 'SLURM_STEP_NUM_TASKS',
        'SLURM_HET_SIZE', 'MASTER_ADDR', 'MASTER_PORT')

# srun -n8 -N1 : -n4 -N2 in a heterogeneous job of two components, the first on n3
# (8 tasks), the second on n1 and n2 (2 tasks each). What each task is given:
# SLURM_NODEID counts the first component's node first (n3 0, n1 1, n2 2), the step's
# node list and tasks per node are in name order (n1, n2, n3).
HET_STEP = dict(SLURM_STEP_NODELIST='n[1-3]', SLURM_STEP_TASKS_PER_NODE='2(x2),8',
                SLURM_STEP_NUM_NODES='3', SLURM_STEP_NUM_TASKS='12',
                SLURM_JOB_NODELIST='n[1-3]', SLURM_HET_SIZE='2')


@pytest.fixture
def node(monkeypatch):
    """Set up a node of ``gpus`` CUDA devices and this srun task's variables."""
    def setup(gpus, **env):
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
        for key in KEYS:
            monkeypatch.setenv(key, '')
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
    return setup


@pytest.mark.parametrize('task', [0, 1])
def test_a_heterogeneous_step_is_not_refused_for_another_nodes_tasks(node, task):
    """n2 (2 GPUs) runs its 2 tasks; its SLURM_NODEID, 2, is n3's entry, 8 tasks: the
    whole step was refused."""
    node(2, **HET_STEP, SLURMD_NODENAME='n2', SLURM_NODEID=2, SLURM_LOCALID=task,
         SLURM_PROCID=10 + task)
    assert slurm_tasks_on_node() == 2
    check_gpu_per_process('--device cpu', 'slurm')


def test_a_heterogeneous_steps_node_of_more_tasks_than_gpus_is_refused_by_each(node):
    """n3 (4 GPUs) runs 8 tasks; its SLURM_NODEID, 0, is n1's entry, 2 tasks: tasks
    0-3 went on and waited at the rendezvous for 4-7, which stopped on CUDA's
    'invalid device ordinal'."""
    node(4, **HET_STEP, SLURMD_NODENAME='n3', SLURM_NODEID=0, SLURM_LOCALID=0,
         SLURM_PROCID=0)
    assert slurm_tasks_on_node() == 8
    with pytest.raises(UserError, match=r'^started as 8 srun tasks on a node, each seeing '
                                        r'4 CUDA device\(s\)'):
        check_gpu_per_process('--device cpu', 'slurm')


def test_a_step_on_some_of_the_jobs_nodes_counts_from_its_own_first_node(node):
    """srun -N2 -r2 -n3 in a job on n[1-4]: the step runs 2 tasks on n3 and 1 on n4,
    and slurm numbers its nodes from the step's first (n4 is SLURM_NODEID 1), as the
    step's layout: read alike by name and by index."""
    step = dict(SLURM_JOB_NODELIST='n[1-4]', SLURM_STEP_NODELIST='n[3-4]',
                SLURM_STEP_TASKS_PER_NODE='2,1', SLURM_STEP_NUM_NODES='2')
    node(1, **step, SLURMD_NODENAME='n4', SLURM_NODEID=1, SLURM_LOCALID=0)
    assert slurm_tasks_on_node() == 1
    check_gpu_per_process('--device cpu', 'slurm')
    node(1, **step, SLURMD_NODENAME='n3', SLURM_NODEID=0, SLURM_LOCALID=0)
    assert slurm_tasks_on_node() == 2
    with pytest.raises(UserError, match='^started as 2 srun tasks on a node'):
        check_gpu_per_process('--device cpu', 'slurm')


def test_where_the_node_cannot_be_told_no_task_is_refused_for_the_node(node):
    """A node list not read here (or without this node) and an uneven layout: the
    node's count is unknown, only the tasks past the GPUs refuse (task 0 was refused by
    the entry at its SLURM_NODEID)."""
    for node_list in ('n[1-3', 'n1,m[1-2]', 'n[a-c]', 'n[1-2],n2'):
        node(2, **dict(HET_STEP, SLURM_STEP_NODELIST=node_list), SLURMD_NODENAME='n2',
             SLURM_NODEID=2, SLURM_LOCALID=1)
        assert slurm_tasks_on_node() is None, node_list
        check_gpu_per_process('--device cpu', 'slurm')
    node(2, **dict(HET_STEP, SLURM_STEP_NODELIST='n[1-3'), SLURMD_NODENAME='n2',
         SLURM_NODEID=2, SLURM_LOCALID=2)
    with pytest.raises(UserError, match='^started as srun task SLURM_LOCALID=2'):
        check_gpu_per_process('--device cpu', 'slurm')


def test_an_even_layout_needs_no_node_name(node):
    node(4, SLURM_STEP_TASKS_PER_NODE='8(x3)', SLURM_STEP_NODELIST='garbled[',
         SLURMD_NODENAME='n9', SLURM_LOCALID=0)
    assert slurm_tasks_on_node() == 8


@pytest.mark.parametrize('node_list, names', [
    ('gpu[01-03,07],login1', ['gpu01', 'gpu02', 'gpu03', 'gpu07', 'login1']),
    ('n[8-10]', ['n8', 'n9', 'n10']),
    ('n[08-10]', ['n08', 'n09', 'n10']),
    ('n[3,1-2]', ['n3', 'n1', 'n2']),  # (in the list's order, as slurm's hostlist)
    ('a-[1-2]x,b7', ['a-1x', 'a-2x', 'b7']),
    ('n1', ['n1']),
    ('n[1-2', None), ('n[1-2]]', None), ('n[2-1]', None), ('n[]', None), ('a,,b', None),
    ('', None), ('n[1-100000000]', None)])
def test_host_names_of_a_node_list(node_list, names):
    assert slurm_host_names(node_list, 8) == names
