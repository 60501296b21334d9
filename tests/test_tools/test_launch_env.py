"""tests/launch.py's environment for training subprocesses."""
import os

from tests.launch import RENDEZVOUS, fresh_run_env


def test_fresh_run_env_keeps_installed_packages_on_pythonpath(monkeypatch):
    """The repository goes in front of the PYTHONPATH this process has (packages
    installed there, as on a machine with carried wheels, stay importable); the
    launcher's rendezvous variables go, and torch gets one thread."""
    monkeypatch.setenv('PYTHONPATH', '/opt/site')
    monkeypatch.setenv('MASTER_PORT', '29500')
    env = fresh_run_env(PYTHONPATH='/repo')
    assert env['PYTHONPATH'] == '/repo' + os.pathsep + '/opt/site'
    assert env['OMP_NUM_THREADS'] == '1'
    assert not set(RENDEZVOUS) & set(env)
    monkeypatch.delenv('PYTHONPATH')
    assert fresh_run_env(PYTHONPATH='/repo')['PYTHONPATH'] == '/repo'
    assert 'PYTHONPATH' not in fresh_run_env()


def test_launch_scripts_take_the_interpreter_from_python(repo_root):
    """dist_train.sh and slurm_train.sh ran `python` from PATH: a venv not activated
    meant the system's interpreter. PYTHON names it (here `echo`, which shows the
    command the script would run)."""
    import subprocess
    env = {**os.environ, 'PYTHON': 'echo'}
    out = subprocess.run(['bash', 'tools/dist_train.sh', 'CFG', '2', '--amp'], cwd=repo_root,
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith('-m torch.distributed.run ') and out.rstrip().endswith(
        'CFG --launcher pytorch --amp')
