"""Temporary names (mmsora.utils.atomic_io) say the process and its machine: a folder
on a disk that several machines share holds temporary files of processes of each, and
a process id means something on its own machine alone. The names of earlier versions,
without the machine, still read back."""
import os
import socket

import pytest

import mmsora.utils.atomic_io as atomic_io
from mmsora.utils.atomic_io import host_tag, tmp_name, tmp_target, tmp_writer


@pytest.mark.parametrize('host, tag', [
    ('node07', 'node07'),
    ('gpu-a100-3.cluster.example.org', 'gpu-a100-3_cluster_example_org'),
    ('ip-10-0-0-5', 'ip-10-0-0-5'),
])
def test_names_say_the_process_and_its_machine(monkeypatch, host, tag):
    monkeypatch.setattr(socket, 'gethostname', lambda: host)
    monkeypatch.setattr(atomic_io, 'pid_namespace', lambda: '')  # (no /proc)
    assert host_tag() == tag
    for target, ext in (('iter_4.pth', '.pth'), ('last_checkpoint', ''), ('a.tar.gz', '.gz')):
        name = tmp_name(f'/run/{target}')
        assert name == f'/run/.{target[:len(target) - len(ext)]}.tmp-{os.getpid()}-{tag}{ext}'
        assert tmp_target(name) == (target, os.getpid())
        assert tmp_writer(name) == (os.getpid(), tag)


def test_a_long_host_name_is_cut_and_told_apart(monkeypatch):
    monkeypatch.setattr(atomic_io, 'pid_namespace', lambda: '')  # (no /proc)
    tags = set()
    for n in (1, 2):
        monkeypatch.setattr(socket, 'gethostname', lambda: f'{"x" * 40}-node-{n}')
        tags.add(host_tag())
        name = tmp_name('/run/dit.pt')
        assert tmp_writer(name) == (os.getpid(), host_tag())
    assert len(tags) == 2 and all(len(tag) == 32 for tag in tags)


def test_earlier_versions_names_say_no_machine():
    assert tmp_writer('.iter_4.tmp-12.pth') == (12, None)
    assert tmp_writer('.iter_4.pth.tmp-12') == (12, None)  # (checkpoints, before that)
    assert tmp_target('.a.tmp-12.npz') == ('a.npz', 12)
    assert tmp_writer('.iter_4.saving.pth') is None  # (DeepSpeed's staging folder)
