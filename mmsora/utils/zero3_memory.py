"""DeepSpeed ZeRO-3's training step, run in one process as one of N would run it, to
count its memory (:func:`mmsora.utils.memory_estimate.estimate_training_memory` with a
stage-3 ``deepspeed`` config).

Where ZeRO-1/2 are counted in closed form (:mod:`mmsora.utils.zero_memory`), ZeRO-3's
timeline is DeepSpeed's parameter coordinator: partitioned weights gathered module by
module for the forward and the backward (prefetched ahead, kept for reuse, or kept
whole below ``stage3_param_persistence_threshold``), gradients reduce-scattered in
buckets into this process's partition, the float32 master partition and the
optimizer's states over it. So DeepSpeed itself runs the step: its engine is built
over a *fake* process group of N processes
(:func:`~mmsora.utils.fsdp_memory.fake_process_group`; collectives return at once
with the right shapes) on fake tensors, and every tensor storage it creates and frees
is counted. Checked against real two-process runs
(``tests/test_utils/test_zero3_memory.py``).

One process cannot answer what needs the other processes' data, so two of DeepSpeed's
checks are answered for them while the step runs (:func:`fake_zero3`): the gradient
norm is valid (no inf / nan: there are no values), and the modules were fetched in the
same order on every process (they run the same code). ``Module.to`` leaves the module
where it is (fake parameters cannot be swapped; the module is on the CPU already).
What DeepSpeed
changes in the process for good (``torch.nn.functional.linear``, swapped for ZeRO-3's
memory-efficient linear, which the step counts; its communication backend and cached
process groups; the environment) is put back after.

The fake tensors are the CPU's, so DeepSpeed runs with its CPU accelerator (also on a
machine with a GPU), whose path is synchronous: on CUDA DeepSpeed fetches and reduces
on side streams, so a tensor may live a little longer there; ``fake=False`` on
``'cuda'`` runs the step there, the collectives still faked, and reads the allocator's
peak. DeepSpeed puts the whole module, cast to the training dtype, on the GPU before
it partitions it: the estimate's ``startup``, which the batch search also holds to the
budget.

Every process holds an equal partition of every parameter (``ceil(numel / N)``
elements, the last one padded), so rank 0 is counted. Not modelled: ``offload_param``
and ``offload_optimizer`` (their host memory would be counted as the GPU's),
DeepSpeed's NVMe swapping, fp16 (its overflow check reads values), hpZ, quantized
weights or gradients, MiCS and ``stage3_module_granularity_threshold``: they are
refused (:func:`check_zero3_config`). DeepSpeed allocates its gradient reduction bucket
(``reduce_bucket_size`` elements in the training dtype) when the engine is built and
keeps it for the whole run, with the flat buffer of this process's gradient
partition: both are in the estimate's ``zero_buffers``, outside the step.
"""
import gc
import importlib
import os
from contextlib import ExitStack, contextmanager
from unittest import mock

import torch

__all__ = ['check_zero3_config', 'count_zero3_step', 'fake_zero3', 'FP16_REFUSAL']

FP16_REFUSAL = ('ZeRO-3 in fp16 is not modelled: its overflow check reads the '
                'gradients\' values, which the count\'s fake tensors do not have (bf16 and '
                'fp32 are)')


def check_zero3_config(ds_config: dict) -> None:
    """Refuse what the count does not model."""
    zero = ds_config.get('zero_optimization') or {}
    if int(zero.get('stage', 0)) != 3:
        raise ValueError(f"not a ZeRO-3 config: stage {zero.get('stage', 0)}")
    if (ds_config.get('fp16') or {}).get('enabled') is True:
        raise ValueError(FP16_REFUSAL)
    for key in ('offload_param', 'offload_optimizer'):
        device = (zero.get(key) or {}).get('device', 'none')
        if device not in (None, 'none'):
            raise ValueError(f'ZeRO-3 with {key} (to {device}) is not modelled: its host '
                             'memory would be counted as the GPU\'s')
    # DeepSpeed's variants whose memory the CPU path does not show (hpZ's secondary
    # partitions and groups, quantized collectives, MiCS, CUDA's fast-fetch buffers)
    for key, off in (('zero_hpz_partition_size', 1), ('zero_quantized_weights', False),
                     ('zero_quantized_nontrainable_weights', False),
                     ('zero_quantized_gradients', False), ('mics_shard_size', -1),
                     ('stage3_module_granularity_threshold', 0)):
        if zero.get(key, off) not in (off, None):
            raise ValueError(f'ZeRO-3 with {key}={zero[key]!r} is not modelled')


@contextmanager
def fake_zero3(model: torch.nn.Module, device: str = 'cpu'):
    """DeepSpeed's cross-process checks answered for one process on fake tensors
    (see the module), for the duration; ``model.to`` returns the model as it is, and
    the environment (DeepSpeed reads ``LOCAL_RANK`` and sets more) is restored after.
    For ``device`` ``'cpu'`` (fake tensors are the CPU's) DeepSpeed's accelerator is
    its CPU one, also on a machine with a GPU."""
    import deepspeed.runtime.zero.partitioned_param_coordinator as coordinator
    import deepspeed.runtime.zero.stage3 as stage3
    from deepspeed.accelerator import real_accelerator
    from deepspeed.utils import groups
    with ExitStack() as stack:
        if (torch.device(device).type == 'cpu'
                and real_accelerator.get_accelerator().device_name() != 'cpu'):
            from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator
            stack.enter_context(_patched(real_accelerator, 'ds_accelerator',
                                         CPU_Accelerator()))
        # DeepSpeed compiles a shared-memory all-reduce op for CPU process groups
        # (minutes of g++): fake collectives need none
        # (not ``import deepspeed.comm.torch as m``: that is torch, which
        # deepspeed.comm imports under the same name)
        ds_comm = importlib.import_module('deepspeed.comm.torch')
        stack.enter_context(_patched(ds_comm, 'build_shm_op', lambda: None))
        # its communication backend, built over the fake group: dropped after
        stack.enter_context(_patched(importlib.import_module('deepspeed.comm.comm'),
                                     'cdb', None))
        stack.enter_context(mock.patch.dict(os.environ))
        os.environ.setdefault('LOCAL_RANK', '0')
        # DeepSpeed keeps the groups it derives from the world group: this fake world's
        for name in ('_WORLD_GROUP', '_DATA_PARALLEL_GROUP'):
            stack.enter_context(_patched(groups, name, None))
        for owner, name, value in (
                (stage3, 'is_invalid_grad_norm', lambda norm: False),
                (coordinator, 'assert_ints_same_as_other_ranks', lambda ints: None)):
            stack.enter_context(_patched(owner, name, value))
        stack.enter_context(mock.patch.object(model, 'to', lambda *args, **kwargs: model))
        # ZeRO-3 swaps torch.nn.functional.linear for its memory-efficient version
        # for good ("This will persist unless manually reset"): counted with it, the
        # caller's process gets torch's back
        functional = torch.nn.functional
        stack.enter_context(_patched(functional, 'linear', functional.linear))
        yield


def _patched(owner, name: str, value):
    """``mock.patch.object(owner, name, value)``, which puts back (or deletes) the
    attribute after; a DeepSpeed that renamed ``name`` fails here instead of going
    unpatched."""
    if not hasattr(owner, name):
        raise RuntimeError(f'{getattr(owner, "__name__", owner)!r} has no {name!r} to '
                           'patch: a DeepSpeed this count was not written for (0.19.8)')
    return mock.patch.object(owner, name, value)


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under ``tensors`` (views of one flat buffer
    count it once)."""
    seen = {}
    for t in tensors:
        if t is not None and t.device.type != 'meta':
            storage = t.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def count_zero3_step(cfg, model_cfg: dict, ema_cfg, ds_config: dict, batch_size: int,
                     text_len, processes: int, fake: bool = True, device: str = 'cpu'):
    """The :class:`~mmsora.utils.memory_estimate.MemoryEstimate` of one of
    ``processes`` ZeRO-3 processes training ``model_cfg`` at ``batch_size`` with
    ``ds_config`` (``'auto'`` values filled), counted on fake tensors; or, with
    ``fake=False``, on real ones on ``device`` (``'cpu'``, or ``'cuda'``: the result's
    ``measured`` is the allocator's peak), the collectives still faked.

    The parts, as they stand between steps: ``weights`` is this process's partition
    of the weights in the training dtype, the parameters DeepSpeed keeps gathered
    from the first forward on (those below ``stage3_param_persistence_threshold``
    elements: all of the demo's, at DeepSpeed's default 1e5) and the buffers;
    ``optimizer_states`` the float32 master partition and the optimizer's states over
    it; ``ema`` the float32 average of the partitions
    (:class:`~mmsora.engine.sharded_ema.ZeroShardedEMA`); ``zero_buffers`` the rest of
    what the engine keeps (the gradient reduction bucket it allocates at start-up and
    the flat gradient partition); ``step`` the weights gathered for the forward and
    backward, gradients, activations and temporaries at the peak, and the batch. With
    gradient accumulation two micro-batches are run per optimizer step (later ones
    repeat the second)."""
    import deepspeed
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._pytree import tree_leaves

    from mmsora.engine.sharded_ema import ZeroShardedEMA
    from mmsora.registry import MODELS
    from .fsdp_memory import fake_process_group
    from .memory_estimate import LiveTensorBytes, MemoryEstimate, build_optimizer
    from .training_inputs import denoiser_kwargs
    check_zero3_config(ds_config)
    micro = min(int(ds_config.get('gradient_accumulation_steps', 1)), 2)
    ds_config = dict(ds_config, gradient_accumulation_steps=micro)
    tensors = (FakeTensorMode(allow_non_fake_inputs=True) if fake
               else torch.device(device))
    on_cuda = not fake and torch.device(device).type == 'cuda'
    if on_cuda:
        # an earlier count's model and engine sit in reference cycles (the forward set
        # below, DeepSpeed's per-parameter closures) until a collection
        gc.collect()
        torch.cuda.synchronize()
        cuda_before = torch.cuda.memory_allocated()
    with fake_process_group(processes), tensors, LiveTensorBytes() as mem:
        model = MODELS.build(model_cfg).train()
        x = torch.randn(batch_size, *model.latent_shape)
        kwargs = denoiser_kwargs(model, batch_size, text_len)
        batch_bytes = _storage_bytes(t for t in tree_leaves([x, kwargs])
                                     if isinstance(t, torch.Tensor))
        optimizer = build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        dtype = (torch.bfloat16 if (ds_config.get('bf16') or {}).get('enabled') is True
                 else torch.float32)
        # the whole module as DeepSpeed moves it to the GPU before partitioning it
        # (weights cast to the training dtype, buffers as they are)
        startup = (sum(p.numel() for p in model.parameters() if p.is_floating_point())
                   * dtype.itemsize
                   + sum(b.numel() * b.element_size() for b in model.buffers()))
        # the engine's forward (mmengine's train_step's) around the objective
        model.forward = lambda: model.diffusion.loss(model.denoiser_in_weight_dtype(),
                                                     x, model_kwargs=kwargs)
        with fake_zero3(model, 'cpu' if fake else device):
            deepspeed.init_distributed(dist_backend='fake', auto_mpi_discovery=False)
            engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                              config=ds_config)
            ema = None
            try:
                mem.peak = mem.current  # the whole model was built on the host
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats()
                zero_optimizer = engine.optimizer
                before_ema = mem.current
                if ema_cfg is not None:  # ShardedEMAHook's
                    ema = ZeroShardedEMA(model, zero_optimizer, **{
                        k: ema_cfg[k] for k in ('momentum', 'update_buffers') if k in ema_cfg})
                ema_bytes = mem.current - before_ema

                def step():  # DeepSpeedOptimWrapper's update_params, per micro-batch
                    for _ in range(micro):
                        loss = engine()['loss']
                        engine.backward(loss.float().mean())
                        engine.step()  # the optimizer's at the last micro-batch
                    if ema is not None:
                        ema.update_parameters()

                step()  # the optimizer creates its states here
                persistent = mem.current - batch_bytes
                # after a step: the partitions, and the small parameters that stay
                # gathered from the first forward on
                weights = _storage_bytes(
                    [t for p in model.parameters()
                     for t in (getattr(p, 'ds_tensor', None), p.data)]
                    + list(model.buffers()))
                masters = zero_optimizer.fp32_partitioned_groups_flat
                optimizer_bytes = _storage_bytes(
                    masters + [m.grad for m in masters]
                    + [t for state in zero_optimizer.optimizer.state.values()
                       for t in state.values() if isinstance(t, torch.Tensor)])
                step()  # the peak is the larger of the two steps'
            finally:
                engine.destroy()
    measured = None
    if on_cuda:
        torch.cuda.synchronize()
        measured = torch.cuda.max_memory_allocated() - cuda_before
    return MemoryEstimate(batch_size=batch_size, peak=mem.peak, weights=weights,
                          ema=ema_bytes, optimizer_states=optimizer_bytes,
                          step=mem.peak - persistent,
                          zero_buffers=persistent - weights - ema_bytes - optimizer_bytes,
                          measured=measured, startup=startup)
