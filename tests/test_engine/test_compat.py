"""The three mmengine 0.10.7 breaks with current torch, each shown and mended."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

import mmsora.engine  # noqa: F401  (applies the checkpoint mend)
from mmsora.engine import AutocastOptimWrapper
from mmsora.utils.cli import UserError
from tests.launch import free_port


def run_python(code, env=None, timeout=120):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_message_hub_checkpoint_loads_with_weights_only(tmp_path):
    hub = MessageHub.get_instance('compat-test')
    hub.update_scalar('train/loss', 0.5)
    hub.update_info('iter', 3)
    path = tmp_path / 'ckpt.pth'
    import numpy as np
    torch.save(dict(message_hub=hub.state_dict(), rng=np.random.get_state()), path)
    loaded = torch.load(path, weights_only=True)
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert loaded['message_hub']['log_scalars']['train/loss'].current() == 0.5
    assert loaded['rng'][0] == 'MT19937'


def test_plain_mmengine_checkpoint_fails_without_the_mend(tmp_path):
    # Documents break (1): without mmsora's mend, torch refuses mmengine's message hub.
    path = tmp_path / 'ckpt.pth'
    result = run_python(f'''
        import torch
        from mmengine.logging import MessageHub
        hub = MessageHub.get_instance('x'); hub.update_scalar('loss', 1.0)
        torch.save(dict(message_hub=hub.state_dict()), {str(path)!r})
        try:
            torch.load({str(path)!r}, weights_only=True)
            print('LOADED')
        except Exception as e:
            print('REFUSED', type(e).__name__)
    ''')
    assert 'REFUSED' in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason='the break is CPU-only')
def test_mmengine_launcher_needs_cuda_but_ours_does_not():
    # Documents break (2) and shows the mend: gloo first, then mmengine leaves it alone.
    env = dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()))
    plain = run_python('''
        from mmengine.dist import init_dist
        try:
            init_dist('pytorch', backend='gloo'); print('OK')
        except Exception as e:
            print('FAILED', type(e).__name__, e)
    ''', env)
    assert 'FAILED' in plain.stdout, plain.stdout + plain.stderr
    env['MASTER_PORT'] = str(free_port())
    mended = run_python('''
        from mmengine.dist import get_dist_info, is_distributed
        from mmsora.engine import init_cpu_distributed
        assert init_cpu_distributed('pytorch')
        print('OK', is_distributed(), get_dist_info())
    ''', env)
    assert 'OK True (0, 1)' in mended.stdout, mended.stdout + mended.stderr


def test_init_cpu_distributed_names_missing_env(monkeypatch):
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    if torch.cuda.is_available():
        pytest.skip('CPU-only path')
    with pytest.raises(UserError, match=r"--launcher pytorch needs the environment "
                       r"variables \['RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'\]; "
                       r'start the script with torchrun \(torchrun --nproc_per_node N '
                       r'SCRIPT ...; for training tools/dist_train.sh\)'):
        mmsora.engine.init_cpu_distributed('pytorch')  # (test.py, infer.py: not dist_train)
    for key in ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError, match="slurm needs SLURM's SLURM_PROCID, SLURM_NTASKS, "
                                        'SLURM_NODELIST: start it with srun'):
        mmsora.engine.init_cpu_distributed('slurm')
    assert mmsora.engine.init_cpu_distributed('none') is False


@pytest.mark.skipif(torch.cuda.is_available(), reason='the break is CPU-only')
def test_amp_optim_wrapper_asserts_gpu_autocast_wrapper_does_not():
    from mmengine.optim import AmpOptimWrapper
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(AssertionError, match='gpu'):
        AmpOptimWrapper(optimizer=optimizer)
    wrapper = AutocastOptimWrapper(optimizer=optimizer)
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().pow(2).mean())
    assert model.weight.dtype == torch.float32
    with pytest.raises(ValueError, match='dtype'):
        AutocastOptimWrapper(optimizer=optimizer, dtype='int8')


def test_deepspeed_is_quiet_on_a_cpu_machine():
    """mmengine imports DeepSpeed whenever it is installed, which warned 'Setting
    accelerator to CPU ...' at the start of every tool run without CUDA."""
    import os
    import subprocess
    import sys

    import pytest
    pytest.importorskip('deepspeed')
    env = {k: v for k, v in os.environ.items() if k != 'DS_ACCELERATOR'}
    out = subprocess.run([sys.executable, '-c', 'import mmsora.engine'], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'Setting accelerator to CPU' not in out.stderr + out.stdout
