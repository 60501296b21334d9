"""ZeroPartitionEMA (the EMA of --deepspeed ZeRO-1/2 runs) on two real DeepSpeed
processes (gloo): each holds half of the average, which follows DeepSpeed's own float32
master weights exactly (not their bf16 rounding in the module), saves in mmengine's
layout on rank 0, goes into the module and back exactly, and loads back exactly. The
ZeRO-3 EMA (ZeroShardedEMA) follows the float32 masters as well.
tools/train.py runs with it in tests/test_engine/test_deepspeed_train.py."""
import os.path as osp
import subprocess
import sys

import pytest
import torch

pytest.importorskip('deepspeed')

from tests.launch import free_port, fresh_run_env  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CASES = [(1, 'bf16', 1), (1, 'bf16+fp32grads', 1), (2, 'fp32', 2), (2, 'bf16', 1)]


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp('zero_ema')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(free_port()),
           osp.join(ROOT, 'tests/zero_partition_ema_worker.py'), str(out)]
    proc = subprocess.run(cmd, env=fresh_run_env(PYTHONPATH=ROOT), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [torch.load(out / f'rank{r}.pt', weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize('case', CASES, ids=lambda c: f'zero{c[0]}-{c[1]}-every{c[2]}')
def test_average_of_the_fp32_masters_half_on_each_process(results, case):
    zero, one = results[0][case], results[1][case]
    state = zero['state']
    assert set(one['state']) == {'steps'}  # rank 1's client state is not saved
    assert int(state['steps']) == 5
    assert set(state) == {'steps'} | {'module.' + k for k in zero['before']}
    for name, expected in zero['reference'].items():
        assert state['module.' + name].dtype == torch.float32
        assert torch.equal(state['module.' + name], expected), name
    # bf16 ZeRO-1 accumulating float32 gradients runs DeepSpeed's BF16_Optimizer
    assert zero['optimizer'] == ('BF16_Optimizer' if case[1] == 'bf16+fp32grads'
                                 else 'DeepSpeedZeroOptimizer')
    if case[1] != 'fp32':  # the test sees the difference from an EMA of bf16 weights
        assert any(not torch.equal(state['module.' + n], v)
                   for n, v in zero['module_average'].items())
    assert zero['dtype'] == ('torch.float32' if case[1] == 'fp32' else 'torch.bfloat16')
    # Buffers: the floating one averaged (update_buffers), the integer one as held;
    # the frozen parameter is its own average.
    running = torch.zeros(5)
    for step in range(5):
        value = torch.full((5,), 0.5 * (step + 1))
        running = value if step == 0 else (
            running.lerp(value, 0.1) if step % case[2] == 0 else running)
    torch.testing.assert_close(state['module.running'], running)
    assert torch.equal(state['module.count'], zero['before']['count'])
    assert torch.equal(state['module.frozen'], zero['before']['frozen'].float())
    # Each process holds half the average (padded to an even split).
    for r in (zero, one):
        assert r['average_numel'] * 2 >= r['total_numel']
        assert r['average_numel'] * 2 - r['total_numel'] < 64


def test_zero3_sharded_ema_follows_the_fp32_masters_too(results):
    """ZeroShardedEMA (ZeRO-3) averages each process's float32 master partitions
    (fp32_partitioned_groups_flat), not the bf16 ds_tensor partitions."""
    zero, one = (r[(3, 'bf16', 1)] for r in results)
    state = zero['state']
    assert int(state['steps']) == 5 and zero['dtype'] == 'torch.bfloat16'
    for name, expected in zero['reference'].items():
        assert torch.equal(state['module.' + name], expected), name
    assert any(not torch.equal(state['module.' + n], v)
               for n, v in zero['module_average'].items())
    assert zero['loaded'] and one['loaded']
    for r in (zero, one):  # the forward of a validation uses the average, then not
        assert r['swapped'] and r['restored']
    # The last rank's partitions end in padding DeepSpeed leaves uninitialised; the
    # average keeps zeros there, so that saved partitions and resumes are exact.
    assert not zero['padding'] and one['padding']
    assert all(p.eq(0).all() for p in one['padding'])
    for r in (zero, one):  # each process holds about half of it
        assert r['total_numel'] <= 2 * r['average_numel'] < r['total_numel'] + 8


@pytest.mark.parametrize('case', CASES, ids=lambda c: f'zero{c[0]}-{c[1]}-every{c[2]}')
def test_swap_and_load_are_exact(results, case):
    for rank, r in enumerate(results):
        assert r[case]['restored'], rank
        assert r[case]['loaded'], rank
        state = results[0][case]['state']
        for name, value in r[case]['during'].items():  # the average, in the module
            expected = state['module.' + name]
            if name in r[case]['reference'] or name == 'running':
                assert torch.equal(value, expected.to(value.dtype)), (rank, name)
            else:  # not averaged: untouched
                assert torch.equal(value, r[case]['before'][name]), (rank, name)
        assert not torch.equal(r[case]['during']['a.weight'], r[case]['before']['a.weight'])
