"""Mends for mmengine 0.10.7 (its newest release) on current torch.

Each mend is one function with a test in ``tests/test_engine/test_compat.py``:

1. Resume fails on torch >= 2.6: ``torch.load`` defaults to ``weights_only=True``
   and mmengine's checkpoints hold ``HistoryBuffer`` objects and numpy arrays and
   scalars (in the message hub and in our saved RNG states). We allowlist exactly
   those types instead of turning the check off, so a crafted pickle still cannot
   run code. ``HistoryBuffer`` also pickles its statistics methods as
   ``getattr(HistoryBuffer, 'min')``; allowlisting ``getattr`` would open the door
   to code execution, so we stop pickling them (they are class-level registrations,
   rebuilt by ``HistoryBuffer.__setstate__``). mmengine's loader itself leaves
   ``weights_only`` to torch's default; local files go through ours instead. Ours
   maps the file for ``load_from`` (the weights are copied into the model and the
   checkpoint dropped: the optimizer state beside them is never read) and reads it
   whole inside a runner's ``resume``, whose optimizer keeps the loaded tensors (a
   mapping would hold a pruned checkpoint's disk space until the run ends; tested in
   ``tests/test_engine/test_reliability.py``).
2. mmengine's ``pytorch``/``slurm`` launchers call ``torch.cuda.set_device`` even on
   CPU-only machines. We initialise a gloo process group from the launcher's
   environment first; mmengine then skips its own initialisation.
   Its runner then gives DDP ``device_ids=[LOCAL_RANK]`` for CPU modules, which DDP
   rejects: tools/train.py sets ``model_wrapper_cfg.device_ids=None`` on CPU.
   Beside GPUs (tools/test.py and infer.py's ``--device cpu``) its loggers name each
   process's device ``CUDA_VISIBLE_DEVICES[LOCAL_RANK]``, an IndexError for a process
   past the GPUs: ``cpu_processes_in_mmengine_logs``.
3. ``AmpOptimWrapper`` asserts a GPU: see
   :class:`mmsora.engine.optimizers.AutocastOptimWrapper` for the CPU bf16 path.
"""
import functools
import os
import subprocess

import numpy as np
import torch
import torch.distributed as torch_dist

__all__ = ['make_mmengine_checkpoints_loadable', 'init_cpu_distributed',
           'cpu_processes_in_mmengine_logs', 'COLLECTIVE_TIMEOUT_S']

# Collective timeout of the process groups we create (gloo on CPU, nccl for sampling):
# 30 min, as process 0 may read a DeepSpeed folder while the others wait for its
# weights (mmsora.apis.inference.load_weights). NCCL's own default is 10 min.
COLLECTIVE_TIMEOUT_S = 1800


def _numpy_checkpoint_globals():
    """Numpy types that appear when numpy arrays/scalars are pickled."""
    try:  # numpy >= 2 moved the private module; pickles name either path
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(name)) for name in (
        'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
        'uint64', 'float16', 'float32', 'float64')]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def _history_buffer_getstate(self):
    """``HistoryBuffer.__getstate__`` without the (class-level) statistics methods."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def make_mmengine_checkpoints_loadable():
    """Let ``torch.load(weights_only=True)`` read the checkpoints mmengine writes, and
    those of DiT's, fast-DiT's and SiT's own ``train.py`` (``{'model', 'ema', 'opt',
    'args'}``, ``args`` an ``argparse.Namespace``).

    Safe to call more than once. The allowlisted types carry data only: loading
    them cannot execute arbitrary code (a Namespace is rebuilt by setting its
    attributes).
    """
    import argparse

    from mmengine.logging import HistoryBuffer
    from mmengine.runner.checkpoint import CheckpointLoader
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    torch.serialization.add_safe_globals([HistoryBuffer, argparse.Namespace,
                                          *_numpy_checkpoint_globals()])
    # mmengine's own loader (--resume, load_from) calls torch.load without
    # weights_only, i.e. trusts torch's default and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:
    # route local files through ours, which passes weights_only=True explicitly.
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only,
                                     force=True)
    from mmengine.runner import FlexibleRunner, Runner
    for runner in (Runner, FlexibleRunner):
        if not hasattr(runner.resume, 'reads_whole_checkpoints'):
            runner.resume = _reading_whole_checkpoints(runner.resume)


_RESUMING = [0]  # runners' resume calls in progress


def _reading_whole_checkpoints(resume):
    """A runner's ``resume``, during which our loader reads checkpoint files whole."""
    @functools.wraps(resume)
    def wrapped(*args, **kwargs):
        _RESUMING[0] += 1
        try:
            return resume(*args, **kwargs)
        finally:
            _RESUMING[0] -= 1
    wrapped.reads_whole_checkpoints = True
    return wrapped


def load_from_local_weights_only(filename, map_location=None):
    """mmengine's local-file checkpoint loader, weights-only with one-line errors;
    the file mapped but inside a runner's ``resume`` (see the module's note 1).

    (mmengine logs ``name[10:]`` of a loader as its backend: 'local_weights_only'.)
    """
    from mmsora.utils.checkpoint import load_checkpoint_file
    return load_checkpoint_file(os.path.expanduser(filename),
                                map_location=map_location or 'cpu',
                                mmap=not _RESUMING[0])


def slurm_master_addr(node_list: str) -> str:
    """The first host of ``SLURM_NODELIST``, for ``MASTER_ADDR``.

    A plain host name is itself; a list (``node[01-04]``, ``a,b``) is expanded by
    ``scontrol show hostname``, whose stdout alone is read. (mmengine's launcher reads
    ``scontrol ... | head -n1`` with stderr mixed in: without scontrol, as in many
    containers, the rendezvous retried the host '/bin/sh: 1: scontrol: not found'
    for ever.)
    """
    if not any(c in node_list for c in '[],'):
        return node_list
    command = ['scontrol', 'show', 'hostname', node_list]
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, check=True, timeout=60)
        first = done.stdout.split('\n', 1)[0].strip()
        why = 'printed no host name'
    except FileNotFoundError:
        first, why = '', 'not found on PATH'
    except subprocess.CalledProcessError as e:
        said = (e.stderr or '').strip().splitlines()
        first, why = '', f'exit status {e.returncode}' + (f' ({said[0]})' if said else '')
    except (OSError, subprocess.TimeoutExpired) as e:
        first, why = '', str(e).splitlines()[0] if str(e) else type(e).__name__
    if first:
        return first
    from mmsora.utils.cli import UserError
    raise UserError(f'--launcher slurm: cannot name the first host of SLURM_NODELIST='
                    f'{node_list}: {" ".join(command)}: {why}; set MASTER_ADDR to it')


def default_slurm_port() -> str:
    """The rendezvous port of a slurm job that sets no MASTER_PORT: 20000 + its job id
    modulo 10000, so two jobs sharing a node take two ports (both took 29500 and the
    second stopped on a port in use); 29500 outside a job."""
    job = os.environ.get('SLURM_JOB_ID', '')
    return str(20000 + int(job) % 10000) if job.isdigit() else '29500'


def _slurm_env():
    """Fill torch.distributed's env variables from SLURM's, like mmengine's launcher.

    LOCAL_RANK (the task's GPU) is its index on its node, SLURM_LOCALID, which mmengine's
    ``_init_dist_slurm`` sets again (and gives ``torch.cuda.set_device``) on GPUs;
    SLURM_PROCID modulo the GPU count only where slurm sets none, as there. (It was that
    modulo, which tools/extract_features.py encoded with: under cyclic task distribution
    two of a node's tasks shared a GPU while another idled, and more tasks on a node
    than GPUs shared them without a word; on CPU every task was LOCAL_RANK 0.) More
    tasks on a node than its GPUs are refused before, by the tools
    (:func:`mmsora.utils.dist.check_gpu_per_process`)."""
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST')
               if k not in os.environ]
    if missing:
        from mmsora.utils.cli import UserError
        raise UserError(f'--launcher slurm needs SLURM\'s {", ".join(missing)}: start it '
                        'with srun (tools/slurm_train.sh)')
    proc_id = int(os.environ['SLURM_PROCID'])
    ntasks = int(os.environ['SLURM_NTASKS'])
    node_list = os.environ['SLURM_NODELIST']
    os.environ.setdefault('MASTER_PORT', default_slurm_port())
    if 'MASTER_ADDR' not in os.environ:  # (kept when given)
        os.environ['MASTER_ADDR'] = slurm_master_addr(node_list)
    os.environ['WORLD_SIZE'] = str(ntasks)
    local = os.environ.get('SLURM_LOCALID', '')
    os.environ['LOCAL_RANK'] = (local if local.isdigit() else
                                str(proc_id % max(torch.cuda.device_count(), 1)))
    os.environ['RANK'] = str(proc_id)


def cpu_processes_in_mmengine_logs() -> None:
    """Let mmengine's loggers be made in a process on the CPU beside GPUs: MMLogger
    names a process's device ``CUDA_VISIBLE_DEVICES[LOCAL_RANK]`` (or the GPU of that
    index) wherever torch sees CUDA, and a torchrun process past the machine's GPUs
    (``--device cpu``, LOCAL_RANK 4 of 8 on 4 GPUs) raised IndexError at the first
    logger, at mmsora's import. Such a process's device is its LOCAL_RANK there (as
    mmengine says without CUDA). Once per process; a GPU's process is named as before."""
    from mmengine.logging import logger
    device_id = logger._get_device_id
    if getattr(device_id, 'cpu_beside_gpus', False):
        return

    def device_id_or_local_rank():
        try:
            return device_id()
        except IndexError:  # (no GPU of that index: a CPU process)
            return int(os.getenv('LOCAL_RANK', '0'))

    device_id_or_local_rank.cpu_beside_gpus = True
    logger._get_device_id = device_id_or_local_rank


def init_cpu_distributed(launcher: str, timeout_s: int = COLLECTIVE_TIMEOUT_S,
                         beside_cuda: bool = False) -> bool:
    """Initialise a gloo process group for a CPU-only distributed run.

    Args:
        launcher: ``'none'``, ``'pytorch'`` (torchrun) or ``'slurm'``.
        timeout_s: Collective timeout in seconds.
        beside_cuda: Make it on a CUDA machine too (a tool told to run on the CPU
            there: ``mmsora.utils.dist.init_cpu_process_group``).

    Returns:
        True when this call initialised the group. On CUDA machines (unless
        ``beside_cuda``), or with ``launcher='none'``, no group is made and mmengine
        initialises nccl itself (with ``'slurm'`` from the variables filled here: its
        own ``MASTER_ADDR`` is scontrol's output with stderr mixed in, see
        :func:`slurm_master_addr`).
    """
    if launcher != 'none' and beside_cuda:
        cpu_processes_in_mmengine_logs()
    if launcher == 'none' or torch_dist.is_initialized():
        return False
    if launcher == 'slurm':
        _slurm_env()
    elif launcher != 'pytorch':
        raise ValueError(f"launcher must be 'none', 'pytorch' or 'slurm', got {launcher!r}")
    if torch.cuda.is_available() and not beside_cuda:
        return False
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:  # a usage error (one line, exit 2), as for slurm's
        from mmsora.utils.cli import UserError
        raise UserError(
            f'--launcher {launcher} needs the environment variables {missing}; '
            'start the script with torchrun (torchrun --nproc_per_node N SCRIPT ...; for '
            'training tools/dist_train.sh) or srun')
    import datetime
    try:
        torch_dist.init_process_group(
            backend='gloo', timeout=datetime.timedelta(seconds=timeout_s))
    except torch_dist.DistNetworkError as e:
        from mmsora.utils.error_messages import port_in_use_message
        message = port_in_use_message(e)
        if message is None:
            raise
        from mmsora.utils.cli import RunError
        raise RunError(message) from None  # (rank 0's alone: a 30-line traceback)
    return True
