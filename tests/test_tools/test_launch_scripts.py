"""tools/slurm_train.sh and tools/dist_train.sh's command lines: run with a fake
``srun`` first on PATH (it prints the arguments it gets, one a line) and ``PYTHON=echo``."""
import os
import subprocess

import pytest


@pytest.fixture
def run_script(repo_root, tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    srun.chmod(0o755)

    def run(script, *args, **env):
        env = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               'PYTHON': 'python-of-the-run', **env}
        for key in ('GPUS', 'GPUS_PER_NODE', 'SRUN_ARGS'):
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
    return lines[:lines.index('python-of-the-run')]


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
