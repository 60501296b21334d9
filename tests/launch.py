"""Starting tools/train.py and tools/dist_train.sh from tests."""
import importlib
import json
import os
import subprocess
import sys

from mmsora.utils.dist import free_port  # noqa: F401  (for the tests)


RENDEZVOUS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def skip_deepspeed_shm_build() -> None:
    """DeepSpeed compiles a shared-memory all-reduce op with g++ (minutes) when it
    sets up torch.distributed on CPU; it only speeds up multi-process all-reduce, so
    the test processes go without it. Call before DeepSpeed initialises."""
    try:  # not ``import deepspeed.comm.torch as m``: that is torch itself, which
        # deepspeed.comm imports under the same name
        ds_comm = importlib.import_module('deepspeed.comm.torch')
    except ImportError:
        return
    ds_comm.build_shm_op = lambda: None


# ``python -c RUN script args...``: run a script (tools/train.py) in a process that
# skips DeepSpeed's op build (needs the repository on PYTHONPATH).
RUN = ("import runpy, sys; from tests.launch import skip_deepspeed_shm_build; "
       "skip_deepspeed_shm_build(); sys.argv = sys.argv[1:]; "
       "runpy.run_path(sys.argv[0], run_name='__main__')")


def fresh_run_env(**env) -> dict:
    """This process's environment for a training subprocess that sets up its own
    process group (torchrun or a one-process DeepSpeed run): one torch thread, none
    of the rendezvous variables a surrounding launcher may have left, plus ``env``.
    A ``PYTHONPATH`` given goes in front of this process's (packages installed there
    stay importable)."""
    out = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    if env.get('PYTHONPATH') and out.get('PYTHONPATH'):
        env['PYTHONPATH'] += os.pathsep + out['PYTHONPATH']
    return dict(out, OMP_NUM_THREADS='1', **env)


def run_tool(args, repo_root, timeout=600, **env):
    """Run a command in the repository with one torch thread per process;
    dist_train.sh's ``python`` is this interpreter, venv activated or not."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PATH': path, **env}
    return subprocess.run(args, cwd=repo_root, capture_output=True, text=True,
                          timeout=timeout, env=env)


def counted_train_run(out_dir, train_args, processes=2) -> list:
    """``tools/train.py TRAIN_ARGS`` on ``processes`` gloo processes (torchrun) with
    every tensor storage counted (tests/count_train_memory.py): per rank, for each
    iteration, the bytes alive when it starts and its peak. Run from the repository
    root; the counts are written into ``out_dir``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = os.path.join(str(out_dir), 'memory')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node',
           str(processes), '--master_port', str(free_port()),
           os.path.join(root, 'tests/count_train_memory.py'), *train_args]
    proc = subprocess.run(cmd, env=fresh_run_env(COUNT_MEMORY_OUT=out), cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = []
    for rank in range(processes):
        with open(f'{out}.{rank}.json') as f:
            records.append(json.load(f))
    return records
