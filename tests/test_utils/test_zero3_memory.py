"""DeepSpeed ZeRO-3 memory: the estimate (DeepSpeed's own step on fake tensors over a
fake process group, mmsora.utils.zero3_memory) against real tools/train.py --deepspeed
runs on two gloo processes with every tensor storage counted, and the tool."""
import os
import os.path as osp
import sys

import pytest
import torch

from mmsora.engine.strategies import load_strategy
from mmsora.utils.cli import UserError
from mmsora.utils.memory_estimate import estimate_training_memory
from tests.test_utils.test_zero_memory import (BATCH, DEMO, FUSED, SINGLE_TENSOR,
                                               counted_run, demo_cfg, small_buckets)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import estimate_memory  # noqa: E402

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
         'bf16_accumulating': (FEW_LIVE, BATCH, SINGLE_TENSOR, True, 2, False)}


@pytest.mark.parametrize('case', list(CASES))
def test_estimate_is_a_real_zero3_runs_peak(case, tmp_path):
    options, batch, adamw, amp, accumulate, in_reduce_scatter = CASES[case]
    # buckets of 2e5 elements, smaller than the model (DeepSpeed's 5e8 would be 1 GB)
    strategy = small_buckets(tmp_path, 'deepspeed_zero3', **options)
    cfg = demo_cfg(batch, adamw)
    cfg.optim_wrapper.accumulative_counts = accumulate
    est = estimate_training_memory(cfg, batch, amp='bf16' if amp else None, gpus=2,
                                   deepspeed=load_strategy(strategy)['config'])
    iters = 2 * accumulate
    runs = counted_run(tmp_path, strategy, batch, adamw, amp, accumulate=accumulate,
                       iters=iters)
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
    local_rank, linear = os.environ.get('LOCAL_RANK'), torch.nn.functional.linear
    two, four = (estimate_training_memory(cfg, BATCH, amp='bf16', gpus=n, deepspeed=zero3)
                 for n in (2, 4))
    environ = dict(os.environ)  # after DeepSpeed's first import, which sets some
    # Counted again in the same process (DeepSpeed's cached groups are of a process
    # group gone), with the same result; what DeepSpeed set in the environment
    # (LOCAL_RANK, which it requires, and more) is undone.
    assert estimate_training_memory(cfg, BATCH, amp='bf16', gpus=2, deepspeed=zero3) == two
    assert dict(os.environ) == environ and os.environ.get('LOCAL_RANK') == local_rank
    # ZeRO-3's own linear, which it puts into torch.nn.functional for good, is undone
    assert torch.nn.functional.linear is linear
    from mmsora.registry import MODELS
    model = MODELS.build(demo_cfg().model.to_dict())
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
    # With only tiny parameters kept whole and gathered ones released early, fewer
    # weights stay gathered between steps and the peak is lower.
    few = estimate_training_memory(
        cfg, BATCH, amp='bf16', gpus=2,
        deepspeed=dict(zero3, zero_optimization=dict(zero3['zero_optimization'], **FEW_LIVE)))
    assert few.weights < two.weights / 2 and few.peak < two.peak
    with pytest.raises(ValueError, match='offload_param .to cpu. is not modelled'):
        estimate_training_memory(cfg, BATCH, amp='bf16', gpus=2, deepspeed=load_strategy(
            'deepspeed_zero3_offload')['config'])


def test_tool_counts_zero3(capsys):
    out = estimate_memory.main([DEMO, '--precision', 'bf16', '--gpus', '8', '--deepspeed',
                                'deepspeed_zero3', '--batch-size', '2', '--budget-gb', '2',
                                '--measure', 'cpu'])
    text = capsys.readouterr().out
    assert 'DeepSpeed ZeRO-3 (deepspeed_zero3)' in text and 'the weights ZeRO-3' in text
    estimate = out['estimates'][0]
    assert estimate['zero_buffers'] > 0.93  # GiB: the bucket
    # --measure: the same step on real tensors (collectives still fake), the same peak
    assert estimate['measured'] == estimate['peak']
    assert out['largest_batch'][0]['batch_size'] > 0
    with pytest.raises(UserError, match='offload_param .to cpu. is not modelled'):
        estimate_memory.main([DEMO, '--deepspeed', 'deepspeed_zero3_offload'])
    with pytest.raises(UserError, match='ZeRO-3 in fp16 is not modelled'):
        estimate_memory.main([DEMO, '--deepspeed', 'deepspeed_zero3', '--precision', 'fp16'])
    assert torch.distributed.is_available() and not torch.distributed.is_initialized()
