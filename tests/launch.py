"""Starting tools/train.py and tools/dist_train.sh from tests."""
import os
import subprocess
import sys

from mmsora.utils.dist import free_port  # noqa: F401  (for the tests)


def run_tool(args, repo_root, timeout=600, **env):
    """Run a command in the repository with one torch thread per process;
    dist_train.sh's ``python`` is this interpreter, venv activated or not."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PATH': path, **env}
    return subprocess.run(args, cwd=repo_root, capture_output=True, text=True,
                          timeout=timeout, env=env)
