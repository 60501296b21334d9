"""``--launcher slurm``'s MASTER_ADDR: the first host of SLURM_NODELIST, from
scontrol's stdout alone (mmengine's ``scontrol ... | head -n1`` mixed stderr in: in a
container without scontrol the rendezvous retried the host '/bin/sh: 1: scontrol: not
found' for ever). Only the variables are computed here, no process group."""
import os
import shutil

import pytest
import torch

from mmsora.engine import compat
from mmsora.utils.cli import UserError

FILLED = ('MASTER_ADDR', 'MASTER_PORT', 'WORLD_SIZE', 'RANK', 'LOCAL_RANK')


@pytest.fixture
def slurm(monkeypatch, tmp_path):
    """SLURM's variables of task 1 of 2; PATH holds only tmp_path/bin: head, and no
    scontrol unless a test puts one there. Returns a function writing a fake scontrol."""
    for key in FILLED:  # (set first, so that monkeypatch removes what _slurm_env adds)
        monkeypatch.setenv(key, 'x')
        monkeypatch.delenv(key)
    monkeypatch.delenv('SLURM_JOB_ID', raising=False)
    monkeypatch.setenv('SLURM_PROCID', '1')
    monkeypatch.setenv('SLURM_NTASKS', '2')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    head = shutil.which('head')  # (what mmengine's pipe runs too)
    if head:
        (bin_dir / 'head').symlink_to(head)
    monkeypatch.setenv('PATH', str(bin_dir))

    def fake_scontrol(body):
        path = bin_dir / 'scontrol'
        path.write_text('#!/bin/sh\n' + body + '\n')
        path.chmod(0o755)
    return fake_scontrol


def test_a_plain_host_name_is_used_without_scontrol(slurm, monkeypatch):
    monkeypatch.setenv('SLURM_NODELIST', 'gpu-node07')
    compat._slurm_env()
    assert os.environ['MASTER_ADDR'] == 'gpu-node07'
    assert (os.environ['MASTER_PORT'], os.environ['WORLD_SIZE'], os.environ['RANK']) == (
        '29500', '2', '1')


def test_two_jobs_on_a_node_take_two_ports(slurm, monkeypatch):
    """Without MASTER_PORT every job took 29500: a second job on the node stopped on a
    port in use. The job id picks one; a given MASTER_PORT is kept."""
    monkeypatch.setenv('SLURM_NODELIST', 'gpu-node07')
    ports = []
    for job in ('123456', '123457'):
        monkeypatch.setenv('SLURM_JOB_ID', job)
        monkeypatch.delenv('MASTER_PORT', raising=False)
        compat._slurm_env()
        ports.append(os.environ['MASTER_PORT'])
    assert ports == ['23456', '23457']
    monkeypatch.setenv('MASTER_PORT', '29601')
    compat._slurm_env()
    assert os.environ['MASTER_PORT'] == '29601'


def test_a_given_master_addr_is_kept(slurm, monkeypatch):
    monkeypatch.setenv('SLURM_NODELIST', 'node[01-02]')  # (no scontrol: not needed)
    monkeypatch.setenv('MASTER_ADDR', '10.0.0.5')
    compat._slurm_env()
    assert os.environ['MASTER_ADDR'] == '10.0.0.5'


def test_scontrol_stderr_is_not_the_host(slurm, monkeypatch):
    slurm('echo "scontrol: warning: cannot read slurm.conf" >&2\n'
          '[ "$1 $2 $3" = "show hostname node[01-02]" ] && echo node01 && echo node02')
    monkeypatch.setenv('SLURM_NODELIST', 'node[01-02]')
    compat._slurm_env()
    assert os.environ['MASTER_ADDR'] == 'node01'


def test_no_scontrol_for_a_node_list_is_one_line(slurm, monkeypatch):
    monkeypatch.setenv('SLURM_NODELIST', 'node[01-02],gpu3')
    with pytest.raises(UserError) as e:
        compat._slurm_env()
    assert str(e.value) == (
        '--launcher slurm: cannot name the first host of SLURM_NODELIST=node[01-02],gpu3: '
        'scontrol show hostname node[01-02],gpu3: not found on PATH; set MASTER_ADDR to it')
    assert 'MASTER_ADDR' not in os.environ


def test_a_failing_scontrol_is_one_line_with_its_first_error(slurm, monkeypatch):
    slurm('echo "scontrol: error: Invalid hostlist" >&2\necho "second line" >&2\nexit 1')
    monkeypatch.setenv('SLURM_NODELIST', 'node[01-')
    with pytest.raises(UserError, match=r'^--launcher slurm: cannot name the first host of '
                       r'SLURM_NODELIST=node\[01-: scontrol show hostname node\[01-: exit '
                       r'status 1 \(scontrol: error: Invalid hostlist\); set MASTER_ADDR '
                       r'to it$'):
        compat._slurm_env()


def test_cuda_runs_get_the_address_before_mmengines_launcher(slurm, monkeypatch):
    """On GPUs mmengine's own slurm launcher makes the process group, and keeps a
    MASTER_ADDR it finds: init_cpu_distributed fills it there (no group made)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setenv('SLURM_NODELIST', 'gpu-node07')
    assert compat.init_cpu_distributed('slurm') is False
    assert os.environ['MASTER_ADDR'] == 'gpu-node07'
    assert not torch.distributed.is_initialized()
