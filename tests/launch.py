"""Starting tools/train.py and tools/dist_train.sh from tests."""
import os
import socket
import subprocess
import sys


def free_port() -> int:
    """A port for torchrun's rendezvous (a fixed one may still be held by a run that
    just ended)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_tool(args, repo_root, **env):
    """Run a command in the repository with one torch thread per process;
    dist_train.sh's ``python`` is this interpreter, venv activated or not."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PATH': path, **env}
    return subprocess.run(args, cwd=repo_root, capture_output=True, text=True,
                          timeout=600, env=env)
