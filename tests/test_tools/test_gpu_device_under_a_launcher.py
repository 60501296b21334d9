"""tools/test.py and tools/infer.py given a GPU with --device: under a launcher each
process takes the GPU of its local rank, so --device cuda:N (one GPU for every process)
is refused where test.py put all of them on GPU N and infer.py gave each its own
without a word; --device cuda is each process's own GPU, and test.py's single process
given --device cuda samples on GPU 0 (it stopped on torch.cuda.set_device's ValueError,
'Expected a torch.device with a specified index'). The GPUs are stand-ins (torch.cuda
patched), as in test_cpu_device_under_a_launcher.py, whose fixture this file shares."""
import os.path as osp

import pytest
import torch

import mmsora.apis
import mmsora.apis.run_checks
from tests.cli_helpers import refused
from tests.test_tools.test_cpu_device_under_a_launcher import (  # noqa: F401 (fixture)
    CONFIG, EVALUATION, KEYS, MISSING, Started, argvs, launch)
from tools import test as test_tool


@pytest.mark.parametrize('launcher', ['pytorch', 'slurm'])
@pytest.mark.parametrize('tool', ['test', 'infer'])
def test_one_gpu_for_every_process_is_refused(launch, repo_root, tmp_path, launcher, tool):
    setup, record = launch
    setup(launcher, 2, 1)
    main, argv = argvs(repo_root, tmp_path, launcher, 'cuda:1')[tool]
    assert refused(main, argv) == (
        f'--device cuda:1 under --launcher {launcher}: each process takes the GPU of its '
        'local rank, not one GPU for all; give --device cuda (or no --device), and choose '
        'the GPUs with CUDA_VISIBLE_DEVICES in front of the command (for GPUs 1 and 2: '
        'CUDA_VISIBLE_DEVICES=1,2)')
    assert record.backends == [] and record.devices == []  # refused before the start


@pytest.mark.parametrize('tool', ['test', 'infer'])
def test_device_cuda_is_each_process_own_gpu(launch, repo_root, tmp_path, tool):
    setup, record = launch
    setup('pytorch', 2, 1)
    main, argv = argvs(repo_root, tmp_path, 'pytorch', 'cuda')[tool]
    with pytest.raises(Started):
        main(argv)
    assert record.backends == ['nccl'] and record.devices == [1]


def test_one_process_given_device_cuda_samples_on_gpu_0(repo_root, monkeypatch,
                                                        malloc_calls):
    """(torch.cuda.set_device refuses a device without an index: the stand-in reads
    the index as torch does.)"""
    from torch._utils import _get_device_index
    for key in KEYS:
        monkeypatch.setenv(key, '')
        monkeypatch.delenv(key)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    devices, loaded = [], []
    monkeypatch.setattr(torch.cuda, 'set_device',
                        lambda device: devices.append(_get_device_index(device)))
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config', lambda *a, **k: None)

    def init_model(*args, device=None, **kwargs):
        loaded.append(device)
        raise Started
    monkeypatch.setattr(mmsora.apis, 'init_model', init_model)
    with pytest.raises(Started):
        test_tool.main([osp.join(repo_root, CONFIG), MISSING, '--device', 'cuda',
                        '--evaluation', osp.join(repo_root, EVALUATION)])
    assert devices == [0] and loaded == ['cuda:0']
