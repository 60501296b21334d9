"""PyTorch FSDP's training step, run in one process as one of N would run it, to count
its memory (:func:`mmsora.utils.memory_estimate.estimate_training_memory` with
``fsdp=``).

The model is wrapped as ``tools/train.py --fsdp`` wraps it (mmengine's
``FSDPStrategy`` building ``MMFullyShardedDataParallel`` from the strategy's
``model_wrapper``: one unit per transformer block, ``use_orig_params=True``) over a
*fake* process group of N processes (torch's ``FakeProcessGroup``: collectives
return at once with the right shapes and no data). FSDP's own code then decides
what lives when, as on the real processes: each process's shard of every unit's flat
parameter (padded to a multiple of N), the unit's full parameters gathered for its
forward and freed after it (the root unit's kept to the backward), the next unit
gathered early in the backward (``backward_prefetch``), each unit's full gradient
until it is reduce-scattered into the process's shard of the gradient, the
optimizer states and the EMA (``ShardedEMA``) over the shard. Checked against real
two-process runs (``tests/test_utils/test_fsdp_memory.py``).

Every process holds an equal shard of each flat parameter (padded at its end), but
not an equal number of trainable elements: a frozen parameter (DiT's fixed
``pos_embed``) lies in some processes' shards, which then hold less optimizer state.
The process counted is the one with the most trainable elements
(:func:`worst_rank`; for the demo DiT on two processes rank 1, by 64 KiB of AdamW
state). The optimizer's part includes the gradient shard: with ``use_orig_params``
FSDP keeps the flat gradient from the step to the next forward.
FSDP's ``cpu_offload`` and mmengine's ``activation_checkpointing`` option are not
modelled (the denoiser's ``grad_checkpointing`` is the one counted).
"""
import copy
import warnings
from contextlib import contextmanager

import torch

__all__ = ['fake_process_group', 'check_fsdp_strategy', 'wrap_like_fsdp_strategy',
           'trainable_per_rank', 'worst_rank']


@contextmanager
def fake_process_group(processes: int, rank: int = 0):
    """The default process group, for the duration: ``processes`` fake processes,
    this one ``rank``."""
    import torch.distributed as dist
    if processes < 1:
        raise ValueError(f'processes must be >= 1, got {processes}')
    if dist.is_initialized():
        raise RuntimeError('counting an FSDP step sets up its own (fake) process '
                           'group: run it in a process without one')
    try:  # registers the 'fake' backend (torch >= 2.2)
        import torch.testing._internal.distributed.fake_pg  # noqa: F401
    except ImportError as e:
        raise RuntimeError('this torch has no fake process group (torch.testing.'
                           '_internal.distributed.fake_pg) to count FSDP with') from e
    dist.init_process_group('fake', rank=rank, world_size=processes,
                            store=dist.HashStore())
    try:
        with warnings.catch_warnings():
            # FSDP compares storages by data pointer, which fake ones do not have
            warnings.filterwarnings('ignore', 'Accessing the data pointer of FakeTensor')
            # torch 2.13 deprecates the collectives DeepSpeed calls (ZeRO-3's count):
            # not the user's to act on, and repeated by every count of a --budget-gb
            # search (catch_warnings resets the once-per-place record)
            warnings.filterwarnings(
                'ignore', r'`torch\.distributed\.\w+` is deprecated', FutureWarning)
            yield
    finally:
        dist.destroy_process_group()


def check_fsdp_strategy(strategy: dict) -> dict:
    """The ``model_wrapper`` settings of an ``FSDPStrategy`` config, refusing what the
    count does not model."""
    if strategy.get('type') != 'FSDPStrategy':
        raise ValueError(f"not an FSDPStrategy: {strategy.get('type')!r}")
    if strategy.get('activation_checkpointing'):
        raise ValueError("the FSDP strategy's activation_checkpointing is not modelled: "
                         'set the denoiser\'s grad_checkpointing instead')
    wrapper = copy.deepcopy(dict(strategy.get('model_wrapper') or {}))
    wrapper.setdefault('type', 'MMFullyShardedDataParallel')
    if wrapper.get('cpu_offload'):
        raise ValueError("FSDP's cpu_offload is not modelled (offloaded parameters and "
                         'gradients would be counted on the GPU)')
    sharding = wrapper.get('sharding_strategy') or 'FULL_SHARD'  # (None: torch's default)
    if str(getattr(sharding, 'name', sharding)) != 'FULL_SHARD':
        # (the count's fake process group runs FSDP's own code, which asserts for
        # them: SHARD_GRAD_OP keeps whole parameters from the forward to the backward)
        raise ValueError(f'FSDP sharding_strategy={getattr(sharding, "name", sharding)} is '
                         'not modelled: the count is FULL_SHARD\'s (NO_SHARD: estimate '
                         'without --fsdp, as DDP)')
    return wrapper


def wrap_like_fsdp_strategy(model: torch.nn.Module, strategy: dict,
                            device: str = 'cpu') -> torch.nn.Module:
    """``model`` wrapped as mmengine's ``FSDPStrategy`` wraps it (inside
    :func:`fake_process_group`); on ``device`` (``'cpu'``, or ``'cuda'``: the current
    GPU)."""
    import mmengine.model  # noqa: F401  (fills MODEL_WRAPPERS)
    from mmengine.registry import MODEL_WRAPPERS

    import mmsora.engine.strategies  # noqa: F401  (the wrap policy, registered)
    wrapper = check_fsdp_strategy(strategy)
    wrapper['device_id'] = (torch.cuda.current_device() if torch.device(device).type
                            == 'cuda' else 'cpu')
    return MODEL_WRAPPERS.build(wrapper, default_args=dict(module=model))


def trainable_per_rank(wrapped: torch.nn.Module, processes: int) -> list:
    """For each rank, the trainable elements of the FSDP model ``wrapped`` that its
    shards hold (a rank's shard of a flat parameter is its ``torch.chunk``, as FSDP
    takes it)."""
    from torch.distributed.fsdp._traversal_utils import _get_fsdp_handles
    counts = [0] * processes
    for handle in _get_fsdp_handles(wrapped):
        flat = handle.flat_param
        chunk = -(-flat._unpadded_unsharded_size.numel() // processes)
        # with use_orig_params the original parameters, which may differ in
        # requires_grad; without it they all share the flat parameter's
        params = iter(flat._params or [])
        for (start, end), padding in zip(handle._get_flat_param_offsets(),
                                         flat._is_padding_mask):
            if padding:
                continue
            trainable = (next(params).requires_grad if flat._params is not None
                         else flat.requires_grad)
            if not trainable:
                continue
            for rank in range(processes):
                lo, hi = rank * chunk, (rank + 1) * chunk
                counts[rank] += max(0, min(hi, end + 1) - max(lo, start))
    return counts


def worst_rank(build_model, strategy: dict, processes: int) -> int:
    """The rank whose shards hold the most trainable elements (the first of them):
    ``build_model()`` wrapped on fake tensors. Ranks with as many elements can still
    differ by a few bytes of per-parameter scalars (AdamW's step counts of the
    parameters their shards touch): 20 bytes seen."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with fake_process_group(processes), FakeTensorMode(allow_non_fake_inputs=True):
        counts = trainable_per_rank(wrap_like_fsdp_strategy(build_model(), strategy),
                                    processes)
    return counts.index(max(counts))
