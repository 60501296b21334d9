"""tools/dist_train.sh against the GPUs of the machine it runs on (walk-through "at": a
Latte user with 4 GPUs runs the configs' `dist_train.sh CONFIG 8`). The GPUs are a
stand-in python's answer to the script's count; torchrun's command is printed, not
run."""
import os
import subprocess
import sys

import pytest


@pytest.fixture
def launch(repo_root, tmp_path):
    """Run dist_train.sh with a stand-in python that answers torch's CUDA count with
    ``cuda`` (None: the real python's own answer), prints a torchrun command (-m ...)
    and runs anything else."""
    def run(gpus, cuda=None, **env):
        python = tmp_path / 'python'
        answer = ('' if cuda is None else
                  f'case "$2" in *device_count*) echo {cuda}; exit 0;; esac\n')
        python.write_text(f'#!/bin/sh\nif [ "$1" = -m ]; then echo "$@"; exit 0; fi\n'
                          f'{answer}exec {sys.executable} "$@"\n')
        python.chmod(0o755)
        env = {**os.environ, 'PYTHON': str(python), **env}
        for key in ('PORT', 'MASTER_PORT', 'NNODES', 'NODE_RANK'):
            env.pop(key, None)
        env['PORT'] = '29517'
        return subprocess.run(['bash', os.path.join(repo_root, 'tools', 'dist_train.sh'),
                               'c.py', gpus], cwd=tmp_path, env=env, capture_output=True,
                              text=True)
    return run


def test_more_processes_than_gpus_is_one_line(launch):
    """GPUS=8 on 4 GPUs: mmengine's set_device failed in processes 4-7, each with a
    traceback, under torchrun's ChildFailedError report."""
    done = launch('8', cuda=4)
    assert done.returncode == 2 and done.stdout == ''
    assert done.stderr == ('dist_train.sh: GPUS=8 but this machine has 4 CUDA device(s): '
                           'give 4 or fewer, one process per GPU\n')
    done = launch('3', cuda=2, CUDA_VISIBLE_DEVICES='0,1')
    assert done.returncode == 2
    assert done.stderr == ('dist_train.sh: GPUS=3 but this machine has 2 CUDA device(s) '
                           '(CUDA_VISIBLE_DEVICES=0,1): give 2 or fewer, one process per '
                           'GPU\n')


@pytest.mark.parametrize('gpus, cuda', [('4', 4), ('2', 4), ('auto', 4), ('8', 0),
                                        ('8', 'oops')])
def test_processes_that_fit_go_to_torchrun(launch, gpus, cuda):
    """As many processes as GPUs or fewer, torchrun's own counts, any number on a
    machine without CUDA (CPU processes over gloo), and a count that cannot be read."""
    done = launch(gpus, cuda=cuda)
    assert done.returncode == 0 and done.stderr == ''
    assert done.stdout.startswith('-m torch.distributed.run ')
    assert f'--nproc_per_node={gpus} ' in done.stdout


def test_the_count_is_torchs_on_this_machine(launch):
    """The real python's count: this CPU-only machine (no CUDA device) takes any
    number of processes; a machine with GPUs is refused past them."""
    import torch
    done = launch('64')
    cuda = torch.cuda.device_count()
    if cuda >= 64 or cuda == 0:
        assert done.returncode == 0 and '--nproc_per_node=64 ' in done.stdout
    else:
        assert done.returncode == 2
        assert f'this machine has {cuda} CUDA device(s)' in done.stderr
