"""An EMA of the weights for DeepSpeed ZeRO-1/2 runs, partitioned as the optimizer is.

Under ZeRO-1/2 every process holds the whole module (in the training dtype) and the
float32 master weights of its own partition of each parameter group: a slice
``[rank * n, (rank + 1) * n)`` of the group's flat buffer
(``optimizer.single_partition_of_fp32_groups``). A whole float32 EMA on every process
(:class:`~mmsora.engine.FP32EMAHook`) costs 4 bytes per parameter on every GPU, the
largest state left once ZeRO has partitioned the optimizer (3.7 GiB for a 1 B-parameter
model). :class:`ZeroPartitionEMA` averages each process's master partition instead:

* 4 bytes per parameter over all processes together (``1 / N`` of it each), kept
  where the master partition lives (the host with ``offload_optimizer``);
* it averages the float32 master weights, as DiT's reference EMA does, not their
  bf16 / fp16 rounding in the module;
* the update is one ``lerp`` per group, with no communication.

Checkpoints keep mmengine's layout (``steps`` and ``module.*``): saving gathers the
partitions on rank 0, whose DeepSpeed file holds the client state; on resume every
process reads that file and takes its own slice back, exactly. Validation and the
sampling hooks (:func:`~mmsora.engine.hooks.sampling_model`) put the average into the
module with DeepSpeed's own all-gather of the partitions, and the module's weights
back afterwards, exactly.

``--deepspeed`` with ZeRO-1/2 switches ``EMAHook`` to ``ShardedEMAHook``, which keeps
this average (``to_flexible_runner_config``).
"""
import torch
import torch.distributed as dist

from mmsora.utils.dist import collective_device

__all__ = ['ZeroPartitionEMA', 'is_zero_partition_optimizer']

# Elements gathered to rank 0 at a time, over all processes (64 MiB of float32 on
# rank 0's GPU while a checkpoint is saved).
_GATHER_ELEMENTS = 2 ** 24

# DeepSpeed's two optimizers that partition float32 master weights over a flat buffer
# of the module's weights: attribute names of the masters (this process's partition),
# the flat buffers, the parameters in them, and the views of each process's slice.
_LAYOUTS = (
    # DeepSpeedZeroOptimizer: ZeRO-1 and ZeRO-2
    ('single_partition_of_fp32_groups', 'bit16_groups_flat', 'bit16_groups',
     'parallel_partitioned_bit16_groups'),
    # BF16_Optimizer: ZeRO-1 in bf16 with float32 gradient accumulation
    # (data_types.grad_accum_dtype='fp32')
    ('fp32_groups_flat_partition', 'bf16_groups_flat', 'bf16_groups',
     'bf16_partitioned_groups'),
)


def _copy(targets, sources) -> None:
    """``torch._foreach_copy_`` that allows empty lists (a model without buffers)."""
    if targets:
        torch._foreach_copy_(targets, sources)


def _layout(optimizer):
    """The attribute names (:data:`_LAYOUTS`) ``optimizer`` has, or None."""
    for names in _LAYOUTS:
        if all(hasattr(optimizer, n) for n in (*names, 'real_dp_process_group')):
            return names
    return None


def is_zero_partition_optimizer(optimizer) -> bool:
    """Whether ``optimizer`` is one of DeepSpeed's ZeRO-1/2 optimizers, whose float32
    master weights are partitioned over a flat buffer (:data:`_LAYOUTS`)."""
    return _layout(optimizer) is not None


class ZeroPartitionEMA:
    """A float32 EMA of DeepSpeed ZeRO-1/2's master weights, partitioned as they are,
    with mmengine's ``ExponentialMovingAverage`` rule (the first update copies, then
    every ``interval``-th one moves ``avg += momentum * (weight - avg)``).

    Args:
        model (nn.Module): The DeepSpeed engine's module.
        optimizer: The engine's ZeRO-1/2 optimizer (``DeepSpeedZeroOptimizer``, or
            ``BF16_Optimizer`` for bf16 ZeRO-1 with float32 gradient accumulation).
        momentum (float): As mmengine's (DiT's 0.9999 decay is 1e-4).
        interval (int): Update every ``interval`` calls.
        update_buffers (bool): Average the floating buffers of the state dict too
            (whole, on every process: they are replicated). Parameters the optimizer
            does not train never move; they are saved as float32 copies of the
            module's values, what an average of them holds.

    Master weights kept in half precision (``fp16_master_weights_and_gradients``)
    are averaged in float32 all the same. MoE expert groups are refused: their
    partitions span other processes than the data-parallel ones.
    """

    def __init__(self, model, optimizer, momentum: float = 0.0002, interval: int = 1,
                 update_buffers: bool = False):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f'momentum must be in (0, 1), got {momentum}')
        names = _layout(optimizer)
        if names is None:
            raise TypeError(f'ZeroPartitionEMA needs DeepSpeed ZeRO-1/2\'s optimizer, got '
                            f'{type(optimizer).__name__}')
        if getattr(optimizer, 'has_moe_layers', False):
            raise ValueError('ZeroPartitionEMA does not average MoE expert groups (their '
                             'partitions are not over the data-parallel processes)')
        self.momentum, self.interval, self.steps = momentum, interval, 0
        self.optimizer = optimizer
        masters, flats, groups, partitions = (getattr(optimizer, n) for n in names)
        self.sources, self.flats, self.partitions = list(masters), list(flats), partitions
        self.average = [s.detach().float().clone() for s in self.sources]
        params_named = {id(p): n for n, p in model.named_parameters()}
        # Where each trained parameter lies in its group's flat buffer: DeepSpeed
        # points the module's parameters at views of it (read from the views
        # themselves, so any order or padding DeepSpeed chooses is followed).
        self.layout = []  # per group: [(name, offset, numel, shape)]
        self._ids = {}  # name -> id of the parameter (tied ones have several keys)
        for flat, params, parts in zip(self.flats, groups, partitions):
            entries = []
            for p in params:
                offset = (p.data_ptr() - flat.data_ptr()) // flat.element_size()
                if (p.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()
                        or not 0 <= offset <= flat.numel() - p.numel()):
                    raise RuntimeError(f'parameter {params_named.get(id(p), "?")} is not a view of '
                                       "DeepSpeed's flat buffer (a DeepSpeed version whose "
                                       'ZeRO-1/2 layout ZeroPartitionEMA does not know)')
                entries.append((params_named[id(p)], offset, p.numel(), tuple(p.shape)))
                self._ids[params_named[id(p)]] = id(p)
            self.layout.append(entries)
            if len({t.numel() for t in parts}) != 1 or (
                    parts[0].numel() != self.average[len(self.layout) - 1].numel()):
                raise RuntimeError('DeepSpeed partitions of unequal sizes')
        trained = {id(p) for params in groups for p in params}
        self.frozen = {id(p) for p in model.parameters()
                       if id(p) not in trained and p.is_floating_point()}
        saved = {id(t) for t in model.state_dict(keep_vars=True).values()}
        self.buffers = [b for b in model.buffers() if b.is_floating_point()
                        and id(b) in saved] if update_buffers else []  # persistent ones
        self.buffer_average = [b.detach().float().clone() for b in self.buffers]
        self._kept = None  # the module's own weights while it holds the average

    def _rank(self, group_index: int) -> tuple:
        group = self.optimizer.real_dp_process_group[group_index]
        return dist.get_rank(group), dist.get_world_size(group), group

    def _masters(self):
        """The master partitions in float32 (copies where they are kept in half)."""
        return [s if s.dtype == torch.float32 else s.float() for s in self.sources]

    @torch.no_grad()
    def update_parameters(self, model=None) -> None:
        """One EMA step from the master partitions (``model`` is not used)."""
        if self.steps == 0:
            self.copy_from_model()
        elif self.steps % self.interval == 0:
            torch._foreach_lerp_(self.average, self._masters(), self.momentum)
            for avg, b in zip(self.buffer_average, self.buffers):
                avg.lerp_(b.float(), self.momentum)
        self.steps += 1

    @torch.no_grad()
    def copy_from_model(self) -> None:
        """The average becomes the current master weights (before ``begin_iter``)."""
        torch._foreach_copy_(self.average, self.sources)
        _copy(self.buffer_average, self.buffers)

    @torch.no_grad()  # DeepSpeed's partitions are views of split(): no autograd
    def swap(self) -> None:
        """Put the average into the module (every process: DeepSpeed's all-gather of
        the partitions, in the module's dtype), or (the next call) the module's own
        weights back, exactly. Collective for the first call of a pair. The module's
        weights wait in host memory meanwhile (the GPU holds no second copy)."""
        opt = self.optimizer
        if self._kept is None:
            from deepspeed.runtime.utils import all_gather_dp_groups
            self._kept = ([f.to('cpu', copy=True) for f in self.flats],
                          [b.detach().clone() for b in self.buffers])
            for i, avg in enumerate(self.average):
                rank = self._rank(i)[0]
                self.partitions[i][rank].copy_(avg)
            all_gather_dp_groups(groups_flat=self.flats,
                                 partitioned_param_groups=self.partitions,
                                 dp_process_group=opt.real_dp_process_group,
                                 start_alignment_factor=opt.nccl_start_alignment_factor,
                                 allgather_bucket_size=opt.allgather_bucket_size)
            _copy(self.buffers, self.buffer_average)
        else:
            flats, buffers = self._kept
            self._kept = None
            for flat, kept in zip(self.flats, flats):
                flat.copy_(kept)
            _copy(self.buffers, buffers)

    def _gather_group(self, i: int):
        """Group ``i``'s whole float32 average on rank 0's host (None elsewhere):
        chunks of every process's partition gathered in turn."""
        rank, world, group = self._rank(i)
        device = collective_device()
        average, n = self.average[i], self.average[i].numel()
        whole = torch.empty(world * n, dtype=torch.float32) if rank == 0 else None
        dst = dist.get_global_rank(group, 0)
        size = max(1, _GATHER_ELEMENTS // world)
        for start in range(0, n, size):
            chunk = average[start:start + size].to(device)
            parts = [torch.empty_like(chunk) for _ in range(world)] if rank == 0 else None
            dist.gather(chunk, parts, dst=dst, group=group)
            if rank == 0:
                for r, part in enumerate(parts):
                    whole[r * n + start:r * n + start + part.numel()].copy_(part)
        return whole

    def full_state_dict(self, model) -> dict:
        """``ExponentialMovingAverage.state_dict()``'s layout (``steps`` and
        ``module.*``) of the whole averaged model on rank 0; ``steps`` alone on the
        other processes (DeepSpeed saves rank 0's client state). Collective."""
        averaged = {}
        for i, entries in enumerate(self.layout):
            whole = self._gather_group(i)
            if whole is not None:
                for name, offset, numel, shape in entries:  # views: saved once
                    averaged[self._ids[name]] = whole[offset:offset + numel].view(shape)
        state = {'steps': torch.tensor(self.steps)}
        if dist.get_rank() != 0:
            return state
        buffers = {id(b): avg for b, avg in zip(self.buffers, self.buffer_average)}
        for key, t in model.state_dict(keep_vars=True).items():
            if id(t) in averaged:  # already on the host
                state['module.' + key] = averaged[id(t)]
                continue
            if id(t) in buffers:
                value = buffers[id(t)]
            elif id(t) in self.frozen:  # never moves: its average is itself
                value = t.detach().float()
            else:  # integer buffers, and floating ones without update_buffers
                value = t.detach()
            state['module.' + key] = value.to('cpu', copy=True)
        return state

    @torch.no_grad()
    def load_full_state_dict(self, model, state: dict) -> None:
        """Take this process's slices of a full EMA state dict (``full_state_dict``'s
        layout, read by every process) back; no communication."""
        def entry(name):
            value = state.get('module.' + name)
            if value is None:
                raise KeyError(f"the checkpoint's EMA has no entry for {name!r} (saved "
                               'from another model?)')
            return value
        for i, entries in enumerate(self.layout):
            rank, _, _ = self._rank(i)
            average, n = self.average[i], self.average[i].numel()
            start = rank * n
            average.copy_(self.sources[i])  # the padding, as the master weights hold it
            for name, offset, numel, _ in entries:
                lo, hi = max(offset, start), min(offset + numel, start + n)
                if lo < hi:
                    values = entry(name).reshape(-1)[lo - offset:hi - offset]
                    average[lo - start:hi - start].copy_(values)
        names = {id(b): n for n, b in model.named_buffers()}
        for b, avg in zip(self.buffers, self.buffer_average):
            avg.copy_(entry(names[id(b)]))
        self.steps = int(state['steps'])
