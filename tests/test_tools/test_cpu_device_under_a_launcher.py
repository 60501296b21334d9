"""tools/test.py and tools/infer.py given --device cpu under a launcher (torchrun's
--launcher pytorch, srun's --launcher slurm) on a machine where torch sees GPUs: the
processes join over gloo and leave CUDA alone, any number of them. mmengine's start
(init_dist) gave each NCCL and torch.cuda.set_device(LOCAL_RANK): a CPU run held the
GPUs, and more processes than GPUs were refused (or stopped on 'invalid device
ordinal'). The GPUs are stand-ins (torch.cuda patched); the process group's start is
recorded and stopped there."""
import functools
import os
import os.path as osp
import types

import pytest
import torch
import torch.distributed

import mmsora.apis
import mmsora.apis.run_checks
from tools import infer
from tools import test as test_tool

CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
EVALUATION = 'configs/_base_/evaluation/fid50k_imagenet256.py'
MISSING = '/nonexistent/iter_10.pth'  # never read: the start stops before
KEYS = ('WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'CUDA_VISIBLE_DEVICES',
        'SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST', 'SLURM_LOCALID', 'SLURM_NODEID',
        'SLURM_STEP_TASKS_PER_NODE', 'SLURM_STEP_NODELIST', 'SLURMD_NODENAME',
        'MASTER_ADDR', 'MASTER_PORT')


class Started(Exception):
    """The process group's start was reached (recorded, not made)."""


@pytest.fixture
def launch(monkeypatch):
    """Set up process ``rank`` of ``processes`` on a machine of 4 pretend GPUs, started
    by torchrun or srun; returns the record of the start: ``backends`` given to
    init_process_group, ``devices`` given to torch.cuda.set_device."""
    record = types.SimpleNamespace(backends=[], devices=[])

    def setup(launcher, processes, rank):
        for key in KEYS:  # (set first: what the tool sets is taken off again after)
            monkeypatch.setenv(key, '')
            monkeypatch.delenv(key)
        if launcher == 'pytorch':
            env = dict(WORLD_SIZE=processes, LOCAL_WORLD_SIZE=processes, RANK=rank,
                       LOCAL_RANK=rank, MASTER_ADDR='127.0.0.1', MASTER_PORT=29500)
        else:
            env = dict(SLURM_PROCID=rank, SLURM_NTASKS=processes, SLURM_LOCALID=rank,
                       SLURM_NODEID=0, SLURM_STEP_TASKS_PER_NODE=processes,
                       SLURM_NODELIST='node01', SLURM_STEP_NODELIST='node01',
                       SLURMD_NODENAME='node01', MASTER_ADDR='10.0.0.5')
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: 4)
        monkeypatch.setattr(torch.cuda, 'set_device', record.devices.append)

    def init_process_group(backend=None, **kwargs):
        record.backends.append(backend)
        raise Started
    monkeypatch.setattr(torch.distributed, 'init_process_group', init_process_group)
    # (mmengine's init_dist sets the 'spawn' start method for the whole process)
    monkeypatch.setattr(torch.multiprocessing, 'set_start_method', lambda *a, **k: None)
    # the run's config and checkpoint are checked after the start: not read here
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config', lambda *a, **k: None)
    return setup, record


def argvs(repo_root, tmp_path, launcher, device):
    """Each tool's command line under ``--launcher launcher`` (and ``--device``)."""
    config = osp.join(repo_root, CONFIG)
    extra = ['--device', device] if device else []
    return {
        'test': (test_tool.main, [config, MISSING, '--launcher', launcher, '--evaluation',
                                  osp.join(repo_root, EVALUATION), *extra]),
        'infer': (infer.main, [config, '--checkpoint', MISSING, '--out',
                               str(tmp_path / 's.npz'), '--launcher', launcher, *extra])}


@pytest.mark.parametrize('launcher', ['pytorch', 'slurm'])
@pytest.mark.parametrize('tool', ['test', 'infer'])
@pytest.mark.parametrize('processes, rank', [(2, 1), (8, 5)])
def test_device_cpu_starts_gloo_and_takes_no_gpu(launch, repo_root, tmp_path, launcher,
                                                 tool, processes, rank):
    """As many processes as the GPUs or twice as many: gloo, no set_device (8 on 4
    GPUs were refused: 'started as 8 processes on a machine of 4 CUDA device(s)')."""
    setup, record = launch
    setup(launcher, processes, rank)
    main, argv = argvs(repo_root, tmp_path, launcher, 'cpu')[tool]
    with pytest.raises(Started):
        main(argv)
    assert record.backends == ['gloo']
    assert record.devices == []


@pytest.mark.parametrize('tool', ['test', 'infer'])
def test_without_device_cpu_each_process_takes_its_gpu(launch, repo_root, tmp_path, tool):
    setup, record = launch
    setup('pytorch', 2, 1)
    main, argv = argvs(repo_root, tmp_path, 'pytorch', None)[tool]
    with pytest.raises(Started):
        main(argv)
    assert record.backends == ['nccl']
    assert record.devices == [1]


def test_device_cpu_puts_the_metrics_feature_networks_on_the_cpu(repo_root, monkeypatch,
                                                                 malloc_calls):
    """tools/test.py --device cpu where torch sees a GPU: a metric that names no
    device of its own extracts its features on the CPU (SampleMetric's default is CUDA
    wherever torch sees it: under a launcher every process put its Inception on GPU
    0); one that names its device keeps it."""
    from mmengine.config import Config
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: None)
    monkeypatch.setattr(mmsora.apis.run_checks, 'load_run_config', lambda *a, **k: None)
    for key in KEYS:
        monkeypatch.setenv(key, '')
        monkeypatch.delenv(key)
    config = osp.join(repo_root, CONFIG)
    model = types.SimpleNamespace(loaded_from=MISSING, loaded_weights='EMA')
    monkeypatch.setattr(mmsora.apis, 'init_model',
                        lambda *a, **k: (model, Config.fromfile(config)))
    scored = []
    real = mmsora.apis.evaluate_model

    @functools.wraps(real)  # (its keywords are what the evaluation section may hold)
    def evaluate_model(model, **kwargs):
        scored.append(kwargs['metrics'])
        return {}
    monkeypatch.setattr(mmsora.apis, 'evaluate_model', evaluate_model)
    evaluation = osp.join(repo_root, EVALUATION)
    test_tool.main([config, MISSING, '--device', 'cpu', '--evaluation', evaluation])
    assert [m.get('device') for m in scored[-1]] == ['cpu']
    test_tool.main([config, MISSING, '--device', 'cpu', '--evaluation', evaluation,
                    '--cfg-options', 'evaluation.metrics.0.device=cuda:0'])
    assert [m.get('device') for m in scored[-1]] == ['cuda:0']
    test_tool.main([config, MISSING, '--evaluation', evaluation])  # (the GPU's run)
    assert [m.get('device') for m in scored[-1]] == [None]


SCRIPT = '''
import os, sys
import torch
torch.cuda.is_available = lambda: True  # 4 pretend GPUs: this process is past them
torch.cuda.device_count = lambda: 4
def set_device(device):
    raise SystemExit(f"set_device({device}) called")
torch.cuda.set_device = set_device
if sys.argv[1] == "infer":
    from tools import infer
    infer.main([sys.argv[2], "--checkpoint", sys.argv[3], "--out", sys.argv[4],
                "--launcher", "pytorch", "--device", "cpu"])
else:
    from tools import test
    test.main([sys.argv[2], sys.argv[3], "--launcher", "pytorch", "--device", "cpu",
               "--evaluation", sys.argv[5]])
'''


@pytest.mark.parametrize('tool', ['infer', 'test'])
def test_a_process_past_the_gpus_gets_through_mmsoras_import(repo_root, tmp_path, tool):
    """torchrun's process with LOCAL_RANK 5 on a machine of 4 GPUs, --device cpu, started
    in a fresh interpreter (mmsora not yet imported): mmengine's first logger, made at
    mmsora.apis's import, named the process's device CUDA_VISIBLE_DEVICES[LOCAL_RANK] and
    raised IndexError; the run now gets to its own checks (the checkpoint not found)."""
    import subprocess
    import sys

    from mmsora.utils.dist import free_port
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(WORLD_SIZE='1', RANK='0', LOCAL_RANK='5', LOCAL_WORLD_SIZE='8',
               MASTER_ADDR='127.0.0.1', MASTER_PORT=str(free_port()), PYTHONPATH=repo_root)
    run = subprocess.run(
        [sys.executable, '-c', SCRIPT, tool, CONFIG, MISSING, str(tmp_path / 's.npz'),
         EVALUATION], cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    said = run.stdout + run.stderr
    assert 'IndexError' not in said and 'set_device' not in said, said[-2000:]
    assert run.returncode != 0 and MISSING in said, said[-2000:]
