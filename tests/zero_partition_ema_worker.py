"""One process of tests/test_engine/test_zero_partition_ema.py, started by torchrun
(gloo): trains a small module with DeepSpeed ZeRO-1/2 (ZeroPartitionEMA) or ZeRO-3
(ZeroShardedEMA) and keeps the EMA beside a reference EMA of DeepSpeed's own float32
master weights (``safe_get_full_fp32_param``), then saves what the test compares.

    python -m torch.distributed.run --nproc_per_node 2 tests/zero_partition_ema_worker.py OUT
"""
import os
import sys

import torch
import torch.distributed as dist

from tests.launch import skip_deepspeed_shm_build

skip_deepspeed_shm_build()

import deepspeed  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param  # noqa: E402

import mmsora.engine.zero_partition_ema as zpe  # noqa: E402
from mmsora.engine.sharded_ema import ZeroShardedEMA  # noqa: E402

CASES = [  # (stage, dtype, interval); +fp32grads: DeepSpeed's BF16_Optimizer
    (1, 'bf16', 1),
    (1, 'bf16+fp32grads', 1),
    (2, 'fp32', 2),
    (2, 'bf16', 1),
    (3, 'bf16', 1),
]


class Net(torch.nn.Module):
    """Odd sizes (partitions split parameters), a frozen parameter, a floating and an
    integer buffer."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(7, 13)
        self.b = torch.nn.Linear(13, 5)
        self.frozen = torch.nn.Parameter(torch.randn(3), requires_grad=False)
        self.register_buffer('running', torch.zeros(5))
        self.register_buffer('count', torch.zeros((), dtype=torch.long))

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.running + self.frozen.sum()


def run(stage, dtype, interval, rank, world):
    torch.manual_seed(0)
    model = Net()
    zero = dict(stage=stage)
    if stage == 3:  # several sub-groups of partitions
        zero['sub_group_size'] = 40
    config = dict(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1,
                  train_batch_size=4 * world, zero_optimization=zero,
                  bf16=dict(enabled=dtype.startswith('bf16')), gradient_clipping=0.0)
    if dtype.endswith('+fp32grads'):
        config['data_types'] = dict(grad_accum_dtype='fp32')
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      optimizer=torch.optim.AdamW(trainable, lr=0.05))
    module, optimizer = engine.module, engine.optimizer
    kind = ZeroShardedEMA if stage == 3 else zpe.ZeroPartitionEMA
    ema = kind(module, optimizer, momentum=0.1, interval=interval, update_buffers=True)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    reference, module_average = {}, {}  # EMAs of the fp32 masters, of the module's weights
    gen = torch.Generator().manual_seed(rank)
    for step in range(5):
        x = torch.randn(4, 7, generator=gen).to(next(module.parameters()).dtype)
        engine.backward(engine(x).float().pow(2).mean())
        engine.step()
        with torch.no_grad():
            module.running.add_(0.5)
            module.count.add_(1)
        ema.update_parameters()
        for name in names:
            param = module.get_parameter(name)
            master = safe_get_full_fp32_param(param)  # collective
            with deepspeed.zero.GatheredParameters([param], enabled=stage == 3):
                weight = param.detach().float().clone()  # the module's (bf16) values
            for avg, value in ((reference, master), (module_average, weight)):
                if step == 0:
                    avg[name] = value.clone()
                elif step % interval == 0:
                    avg[name].lerp_(value, 0.1)
    state = ema.full_state_dict(module)
    if stage == 3:
        results = zero3_results(state, reference, module_average, module, optimizer, ema,
                                interval)
        # mmengine's validation right after a training step (which gathers DeepSpeed's
        # persistent small parameters, here all of them): the forward sees the
        # average after swap(), the trained weights after the second swap()
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(9)).bfloat16()
        engine.backward(engine(x).float().pow(2).mean())
        engine.step()
        with torch.no_grad():  # the buffer's average as the buffer: weights alone differ
            ema.average[[t is module.running for t in ema.tensors].index(True)].copy_(
                module.running)
            ema.swap()
            ema_out = engine(x)
            ema.swap()
            back_out = engine(x)
            engine.empty_partition_cache()  # the trained weights, gathered afresh
            trained_out = engine(x)
        results.update(swapped=not torch.equal(ema_out, trained_out),
                       restored=torch.equal(back_out, trained_out))
        return results

    before = {k: v.clone() for k, v in module.state_dict().items()}
    ema.swap()  # collective: the average in the module
    during = {k: v.clone() for k, v in module.state_dict().items()}
    ema.swap()
    restored = all(torch.equal(v, before[k]) for k, v in module.state_dict().items())

    # A resumed process: every rank reads rank 0's entry and takes its slices back.
    objects = [state]
    dist.broadcast_object_list(objects, src=0)
    fresh = zpe.ZeroPartitionEMA(module, optimizer, momentum=0.1, interval=interval,
                                 update_buffers=True)
    fresh.load_full_state_dict(module, objects[0])
    loaded = (fresh.steps == ema.steps and all(
        torch.equal(a, b) for a, b in zip(fresh.average + fresh.buffer_average,
                                          ema.average + ema.buffer_average)))
    total = sum(p.numel() for p in trainable)
    return dict(state=state, reference=reference, module_average=module_average,
                during=during, before=before, restored=restored, loaded=loaded,
                average_numel=sum(a.numel() for a in ema.average), total_numel=total,
                optimizer=type(optimizer).__name__,
                dtype=str(next(module.parameters()).dtype))


def zero3_results(state, reference, module_average, module, optimizer, ema, interval):
    """ZeRO-3: the saved whole average (rank 0), and whether each process's own
    partitions load back exactly."""
    fresh = ZeroShardedEMA(module, optimizer, momentum=0.1, interval=interval,
                           update_buffers=True)
    fresh.load_full_state_dict(module, state)
    loaded = fresh.steps == ema.steps and all(
        torch.equal(a, b) for a, b in zip(fresh.average, ema.average))
    trained = [(a, t) for a, t in zip(ema.average, ema.tensors) if t.requires_grad]
    padding = [a[n:] for a, n in zip(ema.average, ema._valid) if n < a.numel()]
    return dict(state={k: v for k, v in state.items() if k != 'local_average'},
                reference=reference, module_average=module_average, loaded=loaded,
                padding=[p.clone() for p in padding],
                average_numel=sum(a.numel() for a, _ in trained),
                total_numel=sum(t.ds_numel for _, t in trained),
                dtype=str(next(module.parameters()).dtype))


def main(out):
    deepspeed.init_distributed(dist_backend='gloo')
    rank, world = dist.get_rank(), dist.get_world_size()
    zpe._GATHER_ELEMENTS = 32  # 16 per process: several chunks per partition
    results = {case: run(*case, rank, world) for case in CASES}
    torch.save(results, os.path.join(out, f'rank{rank}.pt'))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1])
