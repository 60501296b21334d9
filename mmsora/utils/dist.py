"""Small torch.distributed helpers shared by the trainer, the hooks and the tools."""
import os
import socket

import torch
import torch.distributed as dist

from mmsora.utils.cli import UserError

__all__ = ['collective_device', 'barrier_device_ids', 'close_process_group',
           'abandon_process_group', 'release_engine', 'free_port', 'check_gpu_per_process']


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


def free_port() -> int:
    """A free TCP port on this machine for a rendezvous (a fixed one may still be
    held by a run that just ended)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def check_gpu_per_process(cpu_option: str) -> None:
    """Refuse a torchrun launch of more processes on this machine than it has CUDA
    devices (its LOCAL_WORLD_SIZE, else this process's LOCAL_RANK + 1), one process per
    GPU: a process past them stopped on CUDA's 'invalid device ordinal' traceback in
    ``torch.cuda.set_device``, under torchrun's ChildFailedError report, while the
    others waited for it to join. Every process of the machine refuses alike (said once:
    run_cli). A machine without CUDA runs any number of CPU processes. ``cpu_option``:
    how the tool runs on the CPU instead."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local = os.environ.get('LOCAL_WORLD_SIZE', '')
    rank = os.environ.get('LOCAL_RANK', '0')
    processes = int(local) if local.isdigit() else int(rank) + 1 if rank.isdigit() else 1
    if count == 0 or processes <= count:
        return
    seen = os.environ.get('CUDA_VISIBLE_DEVICES')
    seen = f' (CUDA_VISIBLE_DEVICES={seen})' if seen is not None else ''
    started = (f'{processes} processes' if local.isdigit() else
               f'process LOCAL_RANK={rank}')
    raise UserError(f'started as {started} on a machine of {count} CUDA device(s){seen}: '
                    f'each process takes a GPU of its own; start {count} or fewer '
                    f'(torchrun --nproc_per_node {count}), or run on the CPU with '
                    f'{cpu_option}')
