"""DeepSpeed ZeRO-3 memory: the estimate (DeepSpeed's own step on fake tensors over a
fake process group, mmsora.utils.zero3_memory) against real tools/train.py --deepspeed
runs on two gloo processes with every tensor storage counted, and the tool."""
import os
import re
import warnings

import pytest
import torch

from mmsora.engine.strategies import load_strategy
from mmsora.utils.cli import UserError
from mmsora.utils.memory_estimate import estimate_training_memory
from tests.memory_runs import (BATCH, DEMO, FUSED, SINGLE_TENSOR, counted_demo_run,
                               demo_cfg, demo_model, estimate_memory)
from tests.test_utils.test_zero_memory import small_buckets

pytest.importorskip('deepspeed')

# Gathered weights released as soon as DeepSpeed may: few live parameters, no reuse,
# a small prefetch, and only tiny parameters kept whole.
FEW_LIVE = dict(stage3_max_live_parameters=100000, stage3_max_reuse_distance=0,
                stage3_prefetch_bucket_size=50000, stage3_param_persistence_threshold=1000)

# (zero_optimization options, batch, AdamW options, --amp, micro-batches per step,
# whether the real peak is inside a gradient reduce-scatter). Gloo's reduce-scatter on
# the CPU allocates a copy of its input (torch tensors, counted in the real run) that
# NCCL, working in its own buffers, does not; the fake collectives have none.
CASES = {'bf16': ({}, BATCH, SINGLE_TENSOR, True, 1, False),
         'bf16_few_live': (FEW_LIVE, BATCH, SINGLE_TENSOR, True, 1, False),
         'fp32_batch1_fused': (FEW_LIVE, 1, FUSED, False, 1, True),
         # four micro-batches: the count runs two, the later ones repeat the second
         'bf16_accumulating': (FEW_LIVE, BATCH, SINGLE_TENSOR, True, 4, False)}


@pytest.mark.parametrize('case', list(CASES))
def test_estimate_is_a_real_zero3_runs_peak(case, tmp_path):
    options, batch, adamw, amp, accumulate, in_reduce_scatter = CASES[case]
    # buckets of 2e5 elements, smaller than the model (DeepSpeed's 5e8 would be 1 GB)
    strategy = small_buckets(tmp_path, 'deepspeed_zero3', **options)
    cfg = demo_cfg(batch, adamw, accumulate)
    est = estimate_training_memory(cfg, batch, amp='bf16' if amp else None, gpus=2,
                                   deepspeed=load_strategy(strategy)['config'])
    iters = 2 * accumulate
    runs = counted_demo_run(tmp_path, ['--deepspeed', strategy], batch, adamw, amp,
                            accumulate, iters)
    pictures = batch * 3 * 16 * 16 * 4 + batch * 8  # and labels
    persistent = est.weights + est.ema + est.optimizer_states + est.zero_buffers + pictures
    # The second optimizer step (the states exist): what is alive when it starts and
    # its peak; what is left over is a few scalars (step counts, norms).
    for records in runs:
        second = records[accumulate:]
        assert 0 <= second[0]['before'] - persistent <= 1024, (records, est)
        over = max(r['peak'] for r in second) - est.peak
        if in_reduce_scatter:  # gloo's copy: at most a bucket (2e5 elements)
            assert 1024 < over <= 200000 * (2 if amp else 4) + 1024, (records, est)
        else:
            assert 0 <= over <= 1024, (records, est)
    # the engine's reduction bucket (bf16 or fp32) and this process's gradient partition
    assert est.zero_buffers >= 200000 * (2 if amp else 4)


def test_parts_follow_processes_and_gathering():
    cfg = demo_cfg()
    zero3 = load_strategy('deepspeed_zero3')['config']
    two, four = (estimate_training_memory(cfg, BATCH, amp='bf16', gpus=n, deepspeed=zero3)
                 for n in (2, 4))
    # Counted again in the same process (DeepSpeed's cached groups are of a process
    # group gone), with the same result.
    assert estimate_training_memory(cfg, BATCH, amp='bf16', gpus=2, deepspeed=zero3) == two
    # ZeRO-3's own linear, which it puts into torch.nn.functional for good, is undone
    assert torch.nn.functional.linear is torch._C._nn.linear
    model = demo_model()
    sizes = [p.numel() for p in model.parameters()]
    trainable = [p.numel() for p in model.parameters() if p.requires_grad]
    part = lambda n, sizes=sizes: sum(-(-s // n) for s in sizes)  # noqa: E731
    # Each parameter's partition is ceil(numel / N) elements, in bf16. Every parameter
    # of the demo is below DeepSpeed's persistence threshold (1e5 elements): all stay
    # gathered from the first forward on, beside the partitions.
    assert max(sizes) < 1e5
    assert two.weights == 2 * (part(2) + sum(sizes))
    assert four.weights == 2 * (part(4) + sum(sizes))
    assert two.ema == 4 * part(2) and four.ema == 4 * part(4)  # float32 averages
    # float32 master partitions of the trainable weights and AdamW's two moments, and
    # AdamW's step count (a float32 scalar)
    assert two.optimizer_states == 12 * part(2, trainable) + 4
    assert four.optimizer_states == 12 * part(4, trainable) + 4
    # DeepSpeed's default bucket (5e8 bf16 elements), kept from start-up, and the
    # flat bf16 gradient partition (and a few scalars)
    assert 0 <= two.zero_buffers - (1e9 + 2 * part(2, trainable)) <= 64
    # at start-up DeepSpeed puts the whole bf16 module on the GPU (the demo: no buffers)
    assert two.startup == four.startup == 2 * sum(sizes)
    # With only tiny parameters kept whole and gathered ones released early, fewer
    # weights stay gathered between steps and the peak is lower.
    few = estimate_training_memory(
        cfg, BATCH, amp='bf16', gpus=2,
        deepspeed=dict(zero3, zero_optimization=dict(zero3['zero_optimization'], **FEW_LIVE)))
    assert few.weights < two.weights / 2 and few.peak < two.peak
    with pytest.raises(ValueError, match='offload_param .to cpu. is not modelled'):
        estimate_training_memory(cfg, BATCH, amp='bf16', gpus=2, deepspeed=load_strategy(
            'deepspeed_zero3_offload')['config'])
    with pytest.raises(ValueError, match='ZeRO-3 in fp16 is not modelled'):
        estimate_training_memory(cfg, BATCH, amp='fp16', gpus=2, deepspeed=zero3)
    with pytest.raises(ValueError, match='zero_hpz_partition_size=2 is not modelled'):
        estimate_training_memory(cfg, BATCH, amp='bf16', gpus=2, deepspeed=dict(
            zero3, zero_optimization=dict(zero3['zero_optimization'],
                                          zero_hpz_partition_size=2)))


def patched_by_fake_zero3():
    """(owner, name) of what fake_zero3 patches (and the context must put back)."""
    import importlib

    import deepspeed.runtime.zero.partitioned_param_coordinator as coordinator
    import deepspeed.runtime.zero.stage3 as stage3
    from deepspeed.accelerator import real_accelerator
    from deepspeed.utils import groups
    return [(stage3, 'is_invalid_grad_norm'),
            (coordinator, 'assert_ints_same_as_other_ranks'),
            (groups, '_WORLD_GROUP'), (groups, '_DATA_PARALLEL_GROUP'),
            (importlib.import_module('deepspeed.comm.torch'), 'build_shm_op'),
            (importlib.import_module('deepspeed.comm.comm'), 'cdb'),
            (real_accelerator, 'ds_accelerator'), (torch.nn.functional, 'linear')]


def test_fake_zero3_puts_everything_back(monkeypatch):
    """What fake_zero3 patches is DeepSpeed's and torch's as it was after the context,
    also when it ends in an error; on a machine whose DeepSpeed accelerator is CUDA
    (a stand-in here) the count runs on the CPU one."""
    import importlib

    import deepspeed.runtime.zero.stage3 as stage3
    from deepspeed.accelerator import real_accelerator
    from deepspeed.utils import groups

    from mmsora.utils.zero3_memory import fake_zero3

    class CudaLike:
        def device_name(self):
            return 'cuda'
    monkeypatch.setattr(real_accelerator, 'ds_accelerator', CudaLike())
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    watched = patched_by_fake_zero3()
    before = [getattr(owner, name) for owner, name in watched]
    environ = dict(os.environ)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match='inside'):
        with fake_zero3(model):
            assert os.environ['LOCAL_RANK'] == '0'
            assert real_accelerator.get_accelerator().device_name() == 'cpu'
            assert stage3.is_invalid_grad_norm(torch.tensor(float('nan'))) is False
            assert model.to('meta') is model
            torch.nn.functional.linear = lambda *args: None  # as ZeRO-3 does
            # as DeepSpeed does over the fake group: its backend and derived groups
            groups._WORLD_GROUP = groups._DATA_PARALLEL_GROUP = object()
            importlib.import_module('deepspeed.comm.comm').cdb = object()
            raise RuntimeError('inside')
    after = [getattr(owner, name) for owner, name in watched]
    assert all(a is b for a, b in zip(after, before)), (after, before)
    assert dict(os.environ) == environ and 'to' not in vars(model)
    assert torch.nn.functional.linear is torch._C._nn.linear


def test_fake_zero3_refuses_a_deepspeed_without_its_names(monkeypatch):
    """A DeepSpeed that renamed what the count patches stops it with a clear error,
    and what was patched before that is put back."""
    import deepspeed.runtime.zero.stage3 as stage3

    from mmsora.utils.zero3_memory import fake_zero3
    monkeypatch.delattr(stage3, 'is_invalid_grad_norm')
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    # what is patched before the missing name is reached (the shm builder, the comm
    # backend, the cached groups, the environment) must come back
    watched = [(owner, name) for owner, name in patched_by_fake_zero3()
               if name != 'is_invalid_grad_norm']
    before, environ = [getattr(owner, name) for owner, name in watched], dict(os.environ)
    with pytest.raises(RuntimeError, match="no 'is_invalid_grad_norm'.*0.19.8"):
        with fake_zero3(torch.nn.Linear(2, 2)):
            pass
    after = [getattr(owner, name) for owner, name in watched]
    assert all(a is b for a, b in zip(after, before)), (after, before)
    assert dict(os.environ) == environ


def test_tool_counts_zero3(capsys):
    out = estimate_memory.main([DEMO, '--precision', 'bf16', '--gpus', '8', '--deepspeed',
                                'deepspeed_zero3', '--batch-size', '2', '--budget-gb', '2',
                                '--measure', 'cpu'])
    text = capsys.readouterr().out
    assert 'DeepSpeed ZeRO-3 (deepspeed_zero3)' in text and 'the weights ZeRO-3' in text
    estimate = out['estimates'][0]
    # the demo's module in bf16, in KiB / MiB (it printed as 0.00 GiB)
    found = re.search(r'whole module on the GPU \(([\d.]+) ([KM])iB\), which must fit too',
                      text)
    assert found and float(found[1]) == pytest.approx(
        estimate['startup'] * 2 ** {'K': 20, 'M': 10}[found[2]], rel=5e-3)
    assert estimate['zero_buffers'] > 0.93  # GiB: the bucket
    # torch's deprecation of the collectives DeepSpeed calls is not the user's to see
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter('always')
        estimate_training_memory(demo_cfg(), 2, amp='bf16', gpus=2, deepspeed=load_strategy(
            'deepspeed_zero3')['config'])
    assert not [w for w in seen if 'is deprecated' in str(w.message)], seen
    # --measure: the same step on real tensors (collectives still fake), the same peak
    assert estimate['measured'] == estimate['peak']
    assert out['largest_batch'][0]['batch_size'] > 0
    with pytest.raises(UserError, match='offload_param .to cpu. is not modelled'):
        estimate_memory.main([DEMO, '--deepspeed', 'deepspeed_zero3_offload'])
    with pytest.raises(UserError, match='ZeRO-3 in fp16 is not modelled'):
        estimate_memory.main([DEMO, '--deepspeed', 'deepspeed_zero3', '--precision', 'fp16'])
    assert torch.distributed.is_available() and not torch.distributed.is_initialized()
