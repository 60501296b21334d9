"""tools/slurm_train.sh and tools/dist_train.sh's command lines: run with a fake
``srun`` first on PATH (it prints the arguments it gets, one a line) and ``PYTHON=echo``
(or a stand-in python that prints the torchrun command and runs anything else)."""
import os
import shutil
import socket
import subprocess
import sys

import pytest


@pytest.fixture
def run_script(repo_root, tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text('#!/bin/sh\necho "env: MASTER_PORT=${MASTER_PORT-}"\n'
                    'for a in "$@"; do echo "$a"; done\n')
    srun.chmod(0o755)

    def run(script, *args, **env):
        env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               'PYTHON': 'python-of-the-run', **env}
        for key in ('GPUS', 'GPUS_PER_NODE', 'SRUN_ARGS', 'GRES', 'PORT', 'MASTER_PORT',
                    'NNODES', 'NODE_RANK'):
            if key not in env or env[key] is None:
                env.pop(key, None)
        return subprocess.run(['bash', os.path.join(repo_root, 'tools', script), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
    return run


def train_argv(done):
    """What train.py would get, from the fake srun's lines."""
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    i = lines.index('python-of-the-run')
    assert lines[i + 1:i + 3] == ['-u', os.path.join(os.path.dirname(done.args[1]), 'train.py')]
    return lines[i + 3:]


def srun_options(done):
    lines = done.stdout.splitlines()
    return lines[1:lines.index('python-of-the-run')]


def srun_env(done):
    """The environment variables the fake srun saw (the ones it prints)."""
    assert done.returncode == 0, done.stderr
    return dict([done.stdout.splitlines()[0].split(': ', 1)[1].split('=', 1)])


def test_slurm_train_takes_an_option_in_work_dirs_place_as_an_option(run_script):
    """The requeue command docs/reliability.md gives, `slurm_train.sh PARTITION JOB
    CONFIG --resume`, started a fresh run in ./--resume (--work-dir=--resume)."""
    done = run_script('slurm_train.sh', 'gpu', 'job', 'configs/dit/x_8xb32.py', '--resume')
    assert train_argv(done) == ['configs/dit/x_8xb32.py', '--work-dir=work_dirs/x_8xb32',
                                '--launcher', 'slurm', '--resume']
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', '--cfg-options', 'a=1')
    assert train_argv(done) == ['c.py', '--work-dir=work_dirs/c', '--launcher', 'slurm',
                                '--cfg-options', 'a=1']
    # a WORK_DIR given, with and without options after it
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', 'runs/a', '--resume', '--amp')
    assert train_argv(done) == ['c.py', '--work-dir=runs/a', '--launcher', 'slurm',
                                '--resume', '--amp']
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', 'runs/a')
    assert train_argv(done) == ['c.py', '--work-dir=runs/a', '--launcher', 'slurm']
    for empty in ([], ['']):  # (an empty WORK_DIR, as before: the default)
        done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', *empty)
        assert train_argv(done) == ['c.py', '--work-dir=work_dirs/c', '--launcher', 'slurm']


@pytest.mark.parametrize('gpus, per_node, expected', [
    (None, None, ('8', '8')), ('4', None, ('4', '4')), ('1', None, ('1', '1')),
    ('16', None, ('16', '8')), ('4', '2', ('4', '2'))])
def test_slurm_train_asks_for_at_most_the_gpus_it_runs(run_script, gpus, per_node,
                                                      expected):
    """GPUS=4 alone asked srun for --gres=gpu:8 --ntasks-per-node=8."""
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', GPUS=gpus,
                      GPUS_PER_NODE=per_node)
    options = srun_options(done)
    ntasks, per = expected
    assert f'--ntasks={ntasks}' in options
    assert f'--gres=gpu:{per}' in options and f'--ntasks-per-node={per}' in options


@pytest.mark.parametrize('args, expected', [
    ((), 'PARTITION is missing'),
    (('gpu',), 'JOB_NAME is missing'),
    (('gpu', 'job'), 'CONFIG is missing'),
    (('gpu', 'job', '--resume'), 'CONFIG is missing (got the option --resume in its place)'),
])
def test_slurm_train_names_a_missing_argument(run_script, args, expected):
    done = run_script('slurm_train.sh', *args)
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == (f'slurm_train.sh: {expected}: bash tools/slurm_train.sh '
                           'PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py options]\n')


def test_slurm_train_refuses_a_gpus_that_is_no_count(run_script):
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', GPUS='four')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('slurm_train.sh: GPUS=four is not a number of processes: set '
                           'GPUS to one, e.g. GPUS=16\n')


@pytest.mark.parametrize('args, expected', [
    ((), 'CONFIG is missing'),
    (('--resume',), 'CONFIG is missing (got the option --resume in its place)'),
    (('c.py',), 'GPUS, the number of processes on this node, is missing'),
    (('c.py', '--resume'), 'GPUS, the number of processes on this node, is missing (got '
                           'the option --resume in its place)'),
])
def test_dist_train_names_a_missing_gpu_count(run_script, args, expected):
    """'dist_train.sh CONFIG' stopped on '$2: unbound variable', and 'dist_train.sh
    CONFIG --resume' in torchrun: 'Unsupported nproc_per_node value: --resume'."""
    done = run_script('dist_train.sh', *args, PYTHON='echo')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == (f'dist_train.sh: {expected}: bash tools/dist_train.sh CONFIG '
                           'GPUS [train.py options]\n')
    done = run_script('dist_train.sh', 'c.py', '2', '--resume', PYTHON='echo')
    assert done.returncode == 0 and done.stdout.rstrip().endswith(
        '--nproc_per_node=2 --master_port=29500 '
        f'{os.path.dirname(done.args[1])}/train.py c.py --launcher pytorch --resume')


def test_dist_train_takes_master_port_when_port_is_not_set(run_script):
    """MASTER_PORT=29541 alone trained on 29500 (the script read PORT only)."""
    def port(**env):
        done = run_script('dist_train.sh', 'c.py', '2', PYTHON='echo', **env)
        assert done.returncode == 0, done.stderr
        return [a for a in done.stdout.split() if a.startswith('--master_port=')]
    assert port(MASTER_PORT='29541') == ['--master_port=29541']
    assert port(PORT='29542', MASTER_PORT='29541') == ['--master_port=29542']
    assert port() == ['--master_port=29500']


@pytest.mark.parametrize('gpus', ['two', '0', '08', '2x'])
def test_dist_train_refuses_a_gpus_that_is_no_count(run_script, gpus):
    """'CONFIG two' ended in torchrun's ValueError traceback, 'CONFIG 0' in a bare
    AssertionError."""
    done = run_script('dist_train.sh', 'c.py', gpus, PYTHON='echo')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == (f'dist_train.sh: GPUS={gpus} is not a number of processes: give '
                           'one, e.g. 8: bash tools/dist_train.sh CONFIG GPUS [train.py '
                           'options]\n')


@pytest.mark.parametrize('gpus', ['1', '16', 'auto'])  # (auto: torchrun's own)
def test_dist_train_takes_a_count_of_processes(run_script, gpus):
    done = run_script('dist_train.sh', 'c.py', gpus, PYTHON='echo')
    assert done.returncode == 0 and f'--nproc_per_node={gpus} ' in done.stdout


def test_dist_train_refuses_a_port_that_is_no_number(run_script):
    done = run_script('dist_train.sh', 'c.py', '2', PYTHON='echo', MASTER_PORT='x')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('dist_train.sh: PORT=x is not a port number: set a free one, '
                           'e.g. PORT=29500\n')


@pytest.fixture
def stand_in_python(tmp_path):
    """A python that prints a torchrun command (-m ...) and runs anything else."""
    python = tmp_path / 'python'
    python.write_text(f'#!/bin/sh\nif [ "$1" = -m ]; then echo "$@"; exit 0; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_dist_train_says_in_one_line_that_the_port_is_in_use(run_script, stand_in_python):
    """A port in use gave torchrun's 45-line traceback ending in EADDRINUSE."""
    with socket.socket() as held:
        held.bind(('127.0.0.1', 0))
        held.listen()
        port = held.getsockname()[1]
        done = run_script('dist_train.sh', 'c.py', '2', PYTHON=stand_in_python,
                          PORT=str(port))
        assert done.returncode == 2 and done.stdout == ''
        assert done.stderr.startswith(f'dist_train.sh: port {port} is in use: set PORT to '
                                      'a free one, e.g. PORT=')
        assert done.stderr.count('\n') == 1
        suggested = int(done.stderr.rstrip().rsplit('=', 1)[1])
        assert suggested > port
        # the same port from MASTER_PORT, and for a node of several
        done = run_script('dist_train.sh', 'c.py', '2', PYTHON=stand_in_python,
                          MASTER_PORT=str(port), NNODES='2')
        assert done.returncode == 2
        assert done.stderr.startswith(f'dist_train.sh: port {port} is in use')
        assert done.stderr.endswith(' (the same on every node)\n')
        # another node's torchrun connects to node 0's port: it goes on
        done = run_script('dist_train.sh', 'c.py', '2', PYTHON=stand_in_python,
                          PORT=str(port), NNODES='2', NODE_RANK='1')
        assert done.returncode == 0, done.stderr
        assert f'--master_port={port} ' in done.stdout
    # free again: torchrun is run (exec'd, as tools/soak.py needs), nothing said
    done = run_script('dist_train.sh', 'c.py', '2', PYTHON=stand_in_python, PORT=str(port))
    assert done.returncode == 0 and done.stderr == ''
    assert done.stdout.startswith('-m torch.distributed.run ')
    assert f'--master_port={port} ' in done.stdout


def test_slurm_train_says_when_there_is_no_srun(tmp_path, repo_root):
    """Without srun: 'tools/slurm_train.sh: line 39: srun: command not found' (127)."""
    bin_dir = tmp_path / 'bare_bin'  # the commands the script needs, but no srun
    bin_dir.mkdir()
    for name in ('dirname', 'basename'):
        os.symlink(shutil.which(name), bin_dir / name)
    done = subprocess.run(
        [shutil.which('bash'), os.path.join(repo_root, 'tools', 'slurm_train.sh'), 'gpu',
         'job', 'c.py'], cwd=tmp_path, env={'PATH': str(bin_dir)}, capture_output=True,
        text=True)
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('slurm_train.sh: srun was not found: run this on a slurm login '
                           'node, or tools/dist_train.sh without slurm\n')


def test_slurm_train_passes_a_port_on(run_script):
    """slurm_train.sh passed no port on: the one PORT / MASTER_PORT gives reaches srun."""
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', PORT='29601')
    assert srun_env(done) == {'MASTER_PORT': '29601'}
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', MASTER_PORT='29602')
    assert srun_env(done) == {'MASTER_PORT': '29602'}
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', PORT='29601',
                      MASTER_PORT='29602')
    assert srun_env(done) == {'MASTER_PORT': '29601'}
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py')  # (train.py's by job id)
    assert srun_env(done) == {'MASTER_PORT': ''}
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', PORT='29k')
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('slurm_train.sh: PORT=29k is not a port number: set one, e.g. '
                           'PORT=29501\n')


def test_slurm_train_runs_on_a_cpu_only_partition(run_script):
    """--gres=gpu:N was always asked for: a CPU-only partition refuses it."""
    done = run_script('slurm_train.sh', 'cpu', 'job', 'c.py', GRES='none', GPUS='4')
    options = srun_options(done)
    assert not [o for o in options if o.startswith('--gres')]
    assert '--ntasks=4' in options and '--ntasks-per-node=4' in options
    assert train_argv(done) == ['c.py', '--work-dir=work_dirs/c', '--launcher', 'slurm']
    done = run_script('slurm_train.sh', 'gpu', 'job', 'c.py', GRES='gpu:a100:8')
    assert '--gres=gpu:a100:8' in srun_options(done)
