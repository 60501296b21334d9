"""Small torch.distributed helpers shared by the trainer, the hooks and the tools."""
import os
import re
import socket
from typing import Optional

import torch
import torch.distributed as dist

from mmsora.utils.cli import UserError

__all__ = ['collective_device', 'barrier_device_ids', 'close_process_group',
           'abandon_process_group', 'release_engine', 'free_port', 'check_gpu_per_process',
           'slurm_tasks_on_node', 'slurm_step_counts', 'slurm_host_names',
           'init_cpu_process_group',
           'on_cpu', 'start_on_device', 'check_gpu_of_local_rank', 'NO_GPU_IN_VIEW']

# check_gpu_per_process's ``cpu_option`` for tools/train.py, whose processes under a
# launcher take a GPU each whenever torch sees one (mmengine's launcher sets the device;
# test.py and infer.py have --device cpu: start_on_device)
NO_GPU_IN_VIEW = 'CUDA_VISIBLE_DEVICES= in front of the command (torch then sees no GPU)'


def collective_device() -> torch.device:
    """Where a tensor must live to take part in a collective of the default group:
    this process's CUDA device under NCCL, the CPU otherwise (gloo)."""
    if dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def close_process_group() -> None:
    """End a distributed run cleanly: wait for every process (so none exits while
    rank 0 still writes its last checkpoint or files), then destroy the default
    group. Nothing happens outside a distributed run.

    Without it each process leaves the group to interpreter shutdown, where torch's
    gloo backend can abort ("terminate called without an active exception",
    SIGABRT); torchrun then kills the other processes and reports the run failed.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier(**barrier_device_ids())
        dist.destroy_process_group()


def release_engine(runner) -> None:
    """Let a finished run's DeepSpeed engine go while the process group still stands:
    ``DeepSpeedEngine.destroy`` removes its hooks and ZeRO-3's parameter coordinator
    (which can hold pending all-gathers), then the objects are collected. Left to
    interpreter shutdown, after the group is destroyed, one ZeRO-3 process aborted
    once in CI ("terminate called without an active exception"). Other runs: only
    the collection."""
    import gc
    engine = getattr(getattr(runner, 'strategy', None), 'model', None)
    if callable(getattr(engine, 'destroy', None)):
        engine.destroy()
    del engine
    gc.collect()


def barrier_device_ids() -> dict:
    """``dist.barrier``'s ``device_ids``: the collective device's GPU under NCCL
    (without it torch guesses and warns), nothing under gloo."""
    device = collective_device()
    return dict(device_ids=[device.index]) if device.type == 'cuda' else {}


def abandon_process_group() -> None:
    """Destroy the default group, if any, without waiting for the other processes:
    for a process that stops on an error (they may never reach a barrier)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # already broken: exiting matters more
            pass


def on_cpu(device: Optional[str]) -> bool:
    """Whether a tool's ``--device`` names the CPU (``cpu``, ``cpu:0``); unset (None)
    does not."""
    return device is not None and torch.device(device).type == 'cpu'


def init_cpu_process_group(launcher: str) -> bool:
    """Join the process group of a torchrun (``'pytorch'``) or srun (``'slurm'``)
    launch over gloo, leaving CUDA alone: for the processes of a tool told to run on the
    CPU (tools/test.py and infer.py's ``--device cpu``) on a machine where torch sees
    GPUs. There mmengine's start (init_dist, as init_sampling_processes calls it) takes
    NCCL and ``torch.cuda.set_device(LOCAL_RANK)``: each CPU process held a GPU's
    context, and those past the machine's GPUs stopped on 'invalid device ordinal'.
    (Where torch sees none, init_sampling_processes starts gloo itself:
    mmsora.engine.compat.init_cpu_distributed.) The group is abandoned at exit if the
    tool did not close it (as init_sampling_processes does). Returns whether this call
    made the group (not for ``'none'``, without CUDA, or where one is already made)."""
    if not torch.cuda.is_available():
        return False
    from mmsora.engine.compat import init_cpu_distributed
    made = init_cpu_distributed(launcher, beside_cuda=True)
    if made:
        import atexit
        atexit.register(abandon_process_group)
    return made


def start_on_device(device: Optional[str], launcher: str) -> None:
    """The start of tools/test.py and infer.py under ``launcher``, before any
    mmsora.apis import: with ``--device cpu`` the processes join over gloo and take no
    GPU, any number of them (:func:`init_cpu_process_group`); else each process must
    have a GPU of its own (:func:`check_gpu_per_process`: each past the machine's GPUs
    stopped in mmengine's set_device), the one of its local rank: ``--device cuda:N``
    with several processes on the machine, one GPU for all, is refused (test.py put all
    of them on GPU N, infer.py took each its own without a word); where every machine
    runs one process, each takes GPU N."""
    if launcher == 'none':
        return
    if on_cpu(device):
        init_cpu_process_group(launcher)
        return
    check_gpu_of_local_rank(device, f'--launcher {launcher}', launcher)
    cpu = '--device cpu (the processes then join over gloo)'
    check_gpu_per_process(cpu, launcher, cpu_under_srun=cpu)


def check_gpu_of_local_rank(device: Optional[str], launched: str,
                            launcher: Optional[str] = None) -> None:
    """Refuse a tool's ``--device cuda:N`` where its processes are ``launched``
    (``'--launcher pytorch'``) several on this machine (:func:`_launch_on_machine`, for
    the tool's ``launcher`` as :func:`check_gpu_per_process` takes it): each takes the
    GPU of its local rank, so one GPU named for all of them was either put on every
    process or not followed. Where the launcher says every machine runs one process
    (:func:`_one_process_per_machine`), each takes the GPU named: every process of the
    launch decides alike (one that took it would wait for one that refused)."""
    if device is not None and torch.device(device).index is not None and \
            not _one_process_per_machine(launcher):
        raise UserError(f'--device {device} under {launched}: each process takes the GPU '
                        'of its local rank, not one GPU for all (one named is for one '
                        'process on each machine, where the launcher says so); give '
                        '--device cuda (or no --device), and choose the GPUs with '
                        'CUDA_VISIBLE_DEVICES in front of the command (for GPUs 1 and 2: '
                        'CUDA_VISIBLE_DEVICES=1,2)')


def free_port() -> int:
    """A free TCP port on this machine for a rendezvous (a fixed one may still be
    held by a run that just ended)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def slurm_host_names(node_list: str, most: int) -> Optional[list]:
    """The host names of a slurm node list (``gpu[01-03,07],login1``) in its order, as
    slurm's hostlist expands it (a bracket range keeps its first bound's zero padding:
    ``n[08-10]`` is n08, n09, n10); None for a form not read here or one of more than
    ``most`` names."""
    entries = re.findall(r'(?:[^,\[\]]|\[[^\[\]]*\])+', node_list)
    if not entries or ','.join(entries) != node_list:
        return None
    names = []
    for entry in entries:
        parts = re.split(r'\[([^\]]*)\]', entry)  # text, ranges, text, ranges, ..., text
        expanded = [parts[0]]
        for ranges, text in zip(parts[1::2], parts[2::2]):
            numbers = []
            for item in ranges.split(','):
                match = re.fullmatch(r'(\d+)(?:-(\d+))?', item)
                if match is None or int(match[2] or match[1]) < int(match[1]):
                    return None
                if len(numbers) + int(match[2] or match[1]) - int(match[1]) >= most:
                    return None
                numbers += [str(n).zfill(len(match[1]))
                            for n in range(int(match[1]), int(match[2] or match[1]) + 1)]
            expanded = [f'{name}{n}{text}' for name in expanded for n in numbers]
            if len(expanded) > most:
                return None
        names += expanded
        if len(names) > most:
            return None
    return names


def slurm_step_counts() -> Optional[list]:
    """The tasks of this srun step on each of its nodes, in the step's node order
    (SLURM_STEP_TASKS_PER_NODE: ``8(x2),4`` is [8, 8, 4]); None where slurm does not
    say."""
    counts = []
    for item in os.environ.get('SLURM_STEP_TASKS_PER_NODE', '').split(','):
        match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', item.strip())
        if match is None:
            return None
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def slurm_tasks_on_node() -> Optional[int]:
    """How many tasks of this srun step run on this node: its entry of
    SLURM_STEP_TASKS_PER_NODE (``8(x2),4``: 8 on each of the step's first two nodes,
    then 4), the entry of this node's name (SLURMD_NODENAME) in SLURM_STEP_NODELIST, in
    the same order; the count itself where every node of the step runs as many; None
    where slurm does not say or the node is not found.

    Only where the step's node list is not given, the entry at SLURM_NODEID. That is
    this node's index in the step's layout for a step of one job (srun -N2 -r2 on a
    4-node job counts from the step's first node: slurmstepd finds its node with
    ``nodelist_find(msg->complete_nodelist, conf->node_name)`` in the launch message
    whose ``complete_nodelist`` and ``tasks_to_launch`` are the step's
    ``step_layout->node_list`` and ``->tasks``, which env_array_for_step writes as
    SLURM_STEP_NODELIST and SLURM_STEP_TASKS_PER_NODE). A heterogeneous step's tasks
    (srun ... : ..., --het-group=0,1) get ``nodeid + het_job_node_offset``, counted in
    component order, while srun sorts that step's node list and tasks per node by host
    name (``_reorder_het_job_recs``): there the index read another node's count (a
    false refusal, or a missed one) where the components' nodes are not in name order.
    """
    counts = slurm_step_counts()
    if counts is None:
        return None
    if len(set(counts)) == 1:
        return counts[0]
    name = os.environ.get('SLURMD_NODENAME', '')
    node_list = os.environ.get('SLURM_STEP_NODELIST', '')
    if name or node_list:
        names = slurm_host_names(node_list, len(counts)) if name else None
        if names is None or len(names) != len(counts) or names.count(name) != 1:
            return None  # (a node listed twice: components sharing it)
        return counts[names.index(name)]
    node = os.environ.get('SLURM_NODEID', '')
    return counts[int(node)] if node.isdigit() and int(node) < len(counts) else None


def check_gpu_per_process(cpu_option: str, launcher: Optional[str] = None,
                          cpu_under_srun: Optional[str] = None) -> None:
    """Refuse a launch of more processes on this machine than it has CUDA devices, one
    process per GPU: torchrun's (its LOCAL_WORLD_SIZE, else this process's LOCAL_RANK +
    1) or srun's (``--launcher slurm``; the step's tasks on this node, else this task's
    SLURM_LOCALID + 1: each task takes the GPU of its SLURM_LOCALID, compat._slurm_env).
    A process past them stopped on CUDA's 'invalid device ordinal' traceback in
    ``torch.cuda.set_device``, under torchrun's ChildFailedError report, while the
    others waited for it to join. Every process of the machine refuses alike where the
    launcher tells their count (said once: run_cli). A machine without CUDA runs any
    number of CPU processes. ``cpu_option``: how the tool runs on the CPU instead (said
    to torchrun's processes); ``cpu_under_srun``: the same for srun's tasks, where the
    tool has one (--device cpu; CUDA_VISIBLE_DEVICES= is none there). ``launcher``: the
    tool's ``--launcher`` (``'none'``: one process, nothing to check; None: a tool
    without that flag); srun's tasks are
    counted for ``'slurm'``, and for a start inside srun without torchrun
    (SLURM_LOCALID set, no LOCAL_WORLD_SIZE) whose LOCAL_RANK is unset or the task's
    SLURM_LOCALID (where it is another, such as 0 for tasks of one GPU each, each
    process takes that device: counted as torchrun's; they were refused by the node's
    task count)."""
    if launcher == 'none':
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return
    seen = os.environ.get('CUDA_VISIBLE_DEVICES')
    seen = f' (CUDA_VISIBLE_DEVICES={seen})' if seen is not None else ''
    task, told, processes = _launch_on_machine(launcher)
    if processes <= count:
        return
    if task is not None:
        started = (f'{told} srun tasks on a node, each seeing' if told else
                   f'srun task SLURM_LOCALID={task}, which sees')
        gres = f'--gres=gpu:{told}' if told else '--gres=gpu:N for N tasks per node'
        # (CUDA_VISIBLE_DEVICES= is no CPU route here: srun sets a task's to the GPUs it
        # gives; each task sets the device of its SLURM_LOCALID among those it sees, so
        # a task given one GPU of its own, --gpus-per-task 1, sees one: device 0 alone)
        cpu = f', or run on the CPU with {cpu_under_srun}' if cpu_under_srun else ''
        raise UserError(f'started as {started} {count} CUDA device(s){seen}: each task '
                        f'takes the GPU of its SLURM_LOCALID among those it sees; start '
                        f'{count} or fewer tasks per node (srun '
                        f'--ntasks-per-node {count}), or let every task see all of the '
                        f"node's GPUs ({gres}, without --gpus-per-task or --gpu-bind)"
                        f'{cpu}')
    started = (f'{told} processes' if told else
               f"process LOCAL_RANK={os.environ.get('LOCAL_RANK', '0')}")
    raise UserError(f'started as {started} on a machine of {count} CUDA device(s){seen}: '
                    f'each process takes a GPU of its own; start {count} or fewer '
                    f'(torchrun --nproc_per_node {count}), or run on the CPU with '
                    f'{cpu_option}')


def _one_process_per_machine(launcher: Optional[str]) -> bool:
    """Whether the launcher says that each machine of the launch runs one process:
    srun's step, one task on each of its nodes (SLURM_STEP_TASKS_PER_NODE); torchrun,
    LOCAL_WORLD_SIZE 1, and as many processes as machines (WORLD_SIZE against
    GROUP_WORLD_SIZE, its count of machines' agents, where it gives one)."""
    task, told, _ = _launch_on_machine(launcher)
    if told != 1:
        return False
    if task is not None:
        return set(slurm_step_counts() or [0]) == {1}
    groups = os.environ.get('GROUP_WORLD_SIZE')
    return groups is None or groups == os.environ.get('WORLD_SIZE', groups)


def _launch_on_machine(launcher: Optional[str]):
    """``(task, told, processes)`` of this machine's share of a launch, as
    :func:`check_gpu_per_process` counts it: ``task``, this process's SLURM_LOCALID where
    it is one of srun's tasks (told apart from torchrun's processes, inside a slurm job
    too, as cli.is_first_on_machine does, and from tasks that each set their own
    device), else None; ``told``, the count the launcher tells (the step's tasks on this
    node, torchrun's LOCAL_WORLD_SIZE), else None; ``processes``, that count, else this
    process's index + 1 (the fewest there can be)."""
    task = os.environ.get('SLURM_LOCALID', '')
    if task.isdigit() and (launcher == 'slurm' or (
            'LOCAL_WORLD_SIZE' not in os.environ
            and os.environ.get('LOCAL_RANK', task) == task)):
        told = slurm_tasks_on_node()
        told = told if told is not None and told > int(task) else None
        return int(task), told, told or int(task) + 1
    local = os.environ.get('LOCAL_WORLD_SIZE', '')
    rank = os.environ.get('LOCAL_RANK', '0')
    told = int(local) if local.isdigit() else None
    return None, told, told or (int(rank) + 1 if rank.isdigit() else 1)
