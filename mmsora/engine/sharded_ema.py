"""An EMA of the weights for FSDP and ZeRO-3 runs: each process averages the shard it
holds.

mmengine's ``EMAHook`` deep-copies the model, which fails on an FSDP model
("cannot pickle 'module' object") and would hold a full copy per process if it did
not. Under FSDP with ``use_orig_params=True`` (mmengine's default) every original
parameter of the wrapped model is, between steps, a 1-D view of the part of it this
process holds (possibly empty). :class:`ShardedEMA` keeps a float32 average of each
such view, so the EMA is sharded like the weights (4 bytes per parameter over all
processes together) and its update is local (no communication).

Checkpoints keep mmengine's layout: :class:`ShardedEMAHook` puts the average into the
model's shards, gathers the full state dict as the FSDP strategy does for the weights
(rank 0), and puts the trained shards back; the EMA weights go to ``state_dict``, the
trained ones to ``ema_state_dict`` as ``module.*`` with ``steps``, exactly what
``EMAHook`` writes, so ``tools/infer.py`` and ``--no-ema`` read them as usual.

DeepSpeed ZeRO-3 has the same problem (the module holds empty placeholders between
steps): :class:`ZeroShardedEMA` averages each process's partition of the float32
master weights (the partitions ``ds_tensor`` holds in the training dtype).

DeepSpeed ZeRO-1/2 holds the whole module on every process, but its float32 master
weights partitioned: :class:`~mmsora.engine.zero_partition_ema.ZeroPartitionEMA`
averages each process's partition of them.

``--fsdp`` and ``--deepspeed`` (ZeRO-1/2/3) switch ``EMAHook`` to this hook
(``to_flexible_runner_config``).
"""
import torch

from mmsora.engine.strategies.deepspeed import partitions_weights
from mmsora.registry import HOOKS
from mmsora.utils.dist import collective_device

from .accumulation import optimizer_stepped
from .ema import EMAHook
from .zero_partition_ema import ZeroPartitionEMA, is_zero_partition_optimizer

__all__ = ['ShardedEMA', 'ZeroShardedEMA', 'ShardedEMAHook', 'free_gathered_weights']


def free_gathered_weights(root) -> None:
    """Free the weights the FSDP model ``root`` keeps gathered, so that its next
    forward gathers them from the shards anew. FSDP keeps the root unit's gathered
    weights after a forward for the backward, which frees them; after a forward
    without one (a validation, a sampling hook) with the average swapped into the
    shards, the next training forward found them gathered and ran on the average
    (tests/test_engine/test_sharded_ema.py, test_fsdp_train.py). Freeing is a no-op
    for units FSDP has freed already."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp._runtime_utils import _reshard
    if getattr(root, '_is_root', None) is None:
        return  # no forward yet (FSDP sets its units up lazily): nothing gathered
    # FSDP's own post-backward step (torch 2.13's _runtime_utils._reshard, the
    # handles' free_unsharded_flat_param): private names, checked on 2.13.
    for unit in FSDP.fsdp_modules(root):
        handle = unit._handle
        if handle is not None and handle.uses_sharded_strategy:
            _reshard(unit, handle, free_unsharded_flat_param=True)


class ShardedEMA:
    """A float32 exponential moving average of the tensors of ``model`` this process
    holds, with mmengine's ``ExponentialMovingAverage`` rule: the first update copies,
    then every ``interval``-th one moves ``avg += momentum * (weight - avg)``.

    Args:
        model (nn.Module): The FSDP-wrapped model (``use_orig_params=True``).
        momentum (float): As mmengine's (DiT's 0.9999 decay is 1e-4).
        interval (int): Update every ``interval`` calls.
        update_buffers (bool): Average floating buffers too. Other buffers (and all
            of them without it) are saved as the model holds them: mmengine's EMA
            copies them at each update (integer ones only at its first).
    """

    def __init__(self, model, momentum: float = 0.0002, interval: int = 1,
                 update_buffers: bool = False):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f'momentum must be in (0, 1), got {momentum}')
        self.momentum, self.interval = momentum, interval
        self.steps = 0
        tensors = list(model.parameters())
        if update_buffers:
            tensors += list(model.buffers())
        # The Parameter objects: FSDP points their data at the local shard between
        # steps (and at the full tensor inside forward / backward), so read it late.
        self.tensors = [t for t in tensors if t.is_floating_point()]
        self.average = [t.float().clone() for t in self._sources()]
        self._kept = None  # the model's own shards while it holds the average
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        self._fsdp_root = model if isinstance(model, FSDP) else None

    def _local(self):
        """The part of each averaged tensor this process holds (FSDP: the data of the
        original parameter itself, a view of the local shard between steps)."""
        return [t.detach() for t in self.tensors]

    def _sources(self):
        """What the average follows, part for part: the local shards themselves."""
        return self._local()

    def _targets(self):
        """The parts of the average that follow ``_sources()``: all of it."""
        return self.average

    def update_parameters(self, model=None) -> None:
        """One EMA step from the model's local shards (``model`` is not used)."""
        if self.steps == 0:
            self.copy_from_model()
        elif self.steps % self.interval == 0:
            source = [t if t.dtype == torch.float32 else t.float() for t in self._sources()]
            torch._foreach_lerp_(self._targets(), source, self.momentum)
        self.steps += 1

    def copy_from_model(self) -> None:
        """The average becomes the model's current shards (before ``begin_iter``)."""
        torch._foreach_copy_(self._targets(), self._sources())

    def swap(self) -> None:
        """Put the average into the model's shards, or (the next call) the model's
        own values back, exactly; the average itself is not touched. Under FSDP the
        weights it keeps gathered are freed first (:func:`free_gathered_weights`)."""
        if self._fsdp_root is not None:
            free_gathered_weights(self._fsdp_root)
        local = self._local()
        if self._kept is None:
            self._kept = [t.clone() for t in local]
            torch._foreach_copy_(local, self.average)
        else:
            torch._foreach_copy_(local, self._kept)
            self._kept = None

    def full_state_dict(self, model) -> dict:
        """``ExponentialMovingAverage.state_dict()``'s layout (``steps`` and
        ``module.*``) of the whole averaged model: gathered by the model's FSDP
        state-dict type (empty on ranks other than 0 with ``rank0_only``).
        Collective: every process calls it."""
        self.swap()
        try:  # a plain module's state dict holds its tensors themselves: copy them
            full = {k: v.clone() for k, v in model.state_dict().items()}
        finally:
            self.swap()
        state = {'module.' + k: v for k, v in full.items()}
        state['steps'] = torch.tensor(self.steps)
        return state

    def load_full_state_dict(self, model, state: dict) -> None:
        """Load a full EMA state dict (``full_state_dict``'s layout) into the local
        shards of the average; the model's own weights are left as they were.
        Collective: every process calls it with the full dict."""
        weights = {k[len('module.'):]: v for k, v in state.items()
                   if k.startswith('module.')}
        kept = [t.clone() for t in self._local()]
        try:
            model.load_state_dict(weights)
            torch._foreach_copy_(self.average, self._local())
        finally:
            torch._foreach_copy_(self._local(), kept)
        self.steps = int(state['steps'])


class ZeroShardedEMA(ShardedEMA):
    """:class:`ShardedEMA` for DeepSpeed ZeRO-3, whose parameters are empty
    placeholders between steps: the process's partition is ``param.ds_tensor``, the
    slice ``[rank * n, (rank + 1) * n)`` of the flattened parameter (zero-padded), as
    DeepSpeed's ``zero_to_fp32`` reads it.

    With the engine's optimizer the average follows the float32 master weights of
    those partitions (``fp32_partitioned_groups_flat``: the same slices, in the order
    of ``fp16_groups``), not their bf16 / fp16 rounding in ``ds_tensor``, and lives
    where they do (the host with ``offload_optimizer``); parameters the optimizer does
    not hold (frozen ones, or partitions swapped to NVMe) follow ``ds_tensor``.

    ZeRO-3 checkpoints are one client-state file per process. Each process's entry
    holds its own float32 partitions (``local_average``), which it loads back on
    resume exactly; rank 0's also holds the whole average in
    ``ExponentialMovingAverage.state_dict()``'s layout (a gather to rank 0 per
    parameter on save), for ``tools/zero_to_state_dict.py`` and ``tools/infer.py``.

    Args:
        model (nn.Module): The module of the DeepSpeed engine.
        optimizer (optional): The engine's ZeRO-3 optimizer.
    """

    def __init__(self, model, optimizer=None, **kwargs):
        import torch.distributed as dist
        self._masters = _zero3_master_partitions(optimizer)
        self._optimizer = optimizer if hasattr(optimizer, 'empty_partition_cache') else None
        self._valid = None  # elements of each partition that hold values: all, first
        super().__init__(model, **kwargs)
        # The end of the last rank's partitions is padding that DeepSpeed leaves
        # uninitialised: the average keeps zeros there (it is never saved).
        self._valid = [
            max(0, min(t.partition_numel(),
                       t.ds_numel - dist.get_rank(t.ds_process_group) * t.partition_numel()))
            if hasattr(t, 'ds_tensor') else t.numel() for t in self.tensors]
        self._zero_padding()

    def _zero_padding(self) -> None:
        for a, n in zip(self.average, self._valid):
            a.view(-1)[n:].zero_()

    def _local(self):
        return [t.ds_tensor.detach() if hasattr(t, 'ds_tensor') else t.detach()
                for t in self.tensors]

    def swap(self) -> None:
        """:meth:`ShardedEMA.swap` into the partitions, then let go of the whole
        parameters DeepSpeed keeps gathered (persistent small ones, ones kept for
        reuse, hpZ's secondary copies): the next forward gathers what the partitions
        hold now. Without it a validation ran on (partly) the trained weights, and
        the step after it on (partly) the average. Local: no communication."""
        super().swap()
        if self._optimizer is not None:
            self._optimizer.invalidate_secondary_tensor()
            self._optimizer.empty_partition_cache()

    def _sources(self):
        sources = [self._masters.get(id(t), local) for t, local in zip(self.tensors, self._local())]
        if self._valid is None:
            return sources
        return [s.narrow(0, 0, n) if n != s.numel() else s  # partitions are 1-D
                for s, n in zip(sources, self._valid)]

    def _targets(self):
        return [a.narrow(0, 0, n) if n != a.numel() else a
                for a, n in zip(self.average, self._valid)]

    def full_state_dict(self, model) -> dict:
        """The checkpoint entry (see the class). Collective: every process calls it."""
        import torch.distributed as dist
        rank, world = dist.get_rank(), dist.get_world_size()
        device = collective_device()
        index = {id(t): i for i, t in enumerate(self.tensors)}
        state = {}
        for key, t in model.state_dict(keep_vars=True).items():
            i = index.get(id(t))
            if i is None:  # not averaged: as the model holds it
                value = t.detach()
            elif hasattr(t, 'ds_tensor'):  # the partitions, gathered on rank 0 only
                average = self.average[i].to(device)
                parts = ([torch.empty_like(average) for _ in range(world)] if rank == 0
                         else None)
                dist.gather(average, parts, dst=0)
                value = (torch.cat(parts)[:t.ds_numel].view(t.ds_shape) if rank == 0
                         else None)
            else:
                value = self.average[i].view_as(t)
            if rank == 0:
                state['module.' + key] = value.detach().to('cpu', copy=True)
        state['steps'] = torch.tensor(self.steps)
        state['local_average'] = [a.to('cpu', copy=True) for a in self.average]
        return state

    def load_full_state_dict(self, model, state: dict) -> None:
        """Take this process's own partitions back (no communication)."""
        local = state.get('local_average')
        if local is None or [t.shape for t in local] != [a.shape for a in self.average]:
            raise RuntimeError('this ZeRO-3 checkpoint has no EMA partitions for this '
                               'process (saved with another process count?)')
        torch._foreach_copy_(self.average, [t.to(a.device) for t, a in zip(local, self.average)])
        self._zero_padding()  # older checkpoints kept whatever the padding held
        self.steps = int(state['steps'])


def _zero3_master_partitions(optimizer) -> dict:
    """``{id(param): its float32 master partition}`` of a ZeRO-3 optimizer: views of
    ``fp32_partitioned_groups_flat[i]``, which holds the partitions of
    ``fp16_groups[i]``'s parameters one after the other (``partition_numel`` each).
    Sub-groups swapped out to NVMe (empty there) are left out."""
    views = {}
    groups = getattr(optimizer, 'fp16_groups', None)
    flats = getattr(optimizer, 'fp32_partitioned_groups_flat', None)
    if groups is None or flats is None:
        return views
    for params, flat in zip(groups, flats):
        numels = [p.partition_numel() for p in params]
        if flat.dtype != torch.float32 or flat.numel() != sum(numels):
            continue
        for p, part in zip(params, flat.detach().split(numels)):
            views[id(p)] = part
    return views


@HOOKS.register_module()
class ShardedEMAHook(EMAHook):
    """mmsora's ``EMAHook`` (mmengine's arguments and checkpoint keys, one update per
    optimizer step) for FSDP and DeepSpeed runs, with the average held as
    :class:`ShardedEMA` (FSDP), :class:`ZeroShardedEMA` (ZeRO-3) or
    :class:`ZeroPartitionEMA` (ZeRO-1/2).

    mmengine's FlexibleRunner resumes before the hooks' ``before_run``; the hook swaps
    the checkpoint's entries at once (so the model loads the trained weights) and
    loads the average when it has built it.
    """

    def __init__(self, ema_type: str = 'ShardedEMA', **kwargs):
        if ema_type != 'ShardedEMA':
            raise ValueError(f'ShardedEMAHook keeps a ShardedEMA, got ema_type={ema_type!r}')
        if kwargs.get('device') is not None:
            raise ValueError('ShardedEMAHook keeps the average beside the weights it '
                             f'follows; drop device={kwargs["device"]!r} from the EMAHook')
        super().__init__(ema_type='ExponentialMovingAverage', **kwargs)
        self._pending = None

    def before_run(self, runner) -> None:
        from mmengine.model import is_model_wrapper
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        cfg = {k: v for k, v in self.ema_cfg.items() if k != 'type'}
        model = runner.model  # FSDP: the root, which gathers full state dicts
        if is_model_wrapper(model) and not isinstance(model, FSDP):
            model = model.module  # DeepSpeed: the engine's module
        optimizer = getattr(getattr(runner, 'optim_wrapper', None), 'optimizer', None)
        self.src_model = model
        if partitions_weights(runner.model):
            self.ema_model = ZeroShardedEMA(model, optimizer, **cfg)
        elif is_zero_partition_optimizer(optimizer):  # ZeRO-1/2
            self.ema_model = ZeroPartitionEMA(model, optimizer, **cfg)
        else:
            self.ema_model = ShardedEMA(model, **cfg)
        if self._pending is not None:
            self.ema_model.load_full_state_dict(self.src_model, self._pending)
            self._pending = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not optimizer_stepped(runner):  # within an accumulation (mmsora's EMAHook)
            return
        if self._ema_started(runner):
            self.ema_model.update_parameters()
        else:
            self.ema_model.copy_from_model()

    def _swap_ema_parameters(self) -> None:
        self.ema_model.swap()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['ema_state_dict'] = self.ema_model.full_state_dict(self.src_model)
        self._swap_ema_state_dict(checkpoint)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'ema_state_dict' in checkpoint and runner._resume:
            self._swap_ema_state_dict(checkpoint)  # the model loads the trained weights
            if hasattr(self, 'ema_model'):
                self.ema_model.load_full_state_dict(self.src_model,
                                                    checkpoint['ema_state_dict'])
            else:
                self._pending = checkpoint['ema_state_dict']
        # --load-from (or a checkpoint without an EMA): the first update copies the
        # loaded weights, as mmengine's EMA does.
