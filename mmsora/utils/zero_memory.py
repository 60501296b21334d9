"""What DeepSpeed ZeRO-1 / ZeRO-2 keep per GPU beside the step's activations.

Read from DeepSpeed 0.19.8 (``deepspeed/runtime/engine.py``,
``deepspeed/runtime/zero/stage_1_and_2.py``) and checked against real runs
(``tests/test_utils/test_zero_memory.py``: two gloo processes, every tensor storage
counted). Per process, with P trainable parameters, N processes and m bytes per
element of the training dtype (2 for ``bf16`` / ``fp16``, 4 for fp32):

- the module: DeepSpeed casts every weight to the training dtype (buffers only with
  ``data_types.buffer_dtype``); the trainable ones live in one flat buffer (P·m,
  padded to a multiple of 2N);
- the float32 master copy of this process's partition: 4·P/N;
- the optimizer's states over that partition (AdamW: 8·P/N and a step count);
- gradient reduction buckets, from a backward's first gradient to the step:
  ``reduce_bucket_size`` elements in the training dtype, twice with ``overlap_comm``
  (``contiguous_gradients``, DeepSpeed's default, forced on by offload). xtuner's
  presets keep DeepSpeed's 5e8: 2e9 bytes (1.86 GiB) in bf16 on every GPU, however
  small the model;
- the reduced gradients of the parameters that overlap this process's partition
  (whole parameters, so a little more than P/N·m; the worst rank's is counted), from
  the first bucket's reduction to the step, with ZeRO-1 and ZeRO-2 alike;
- at the step, a flat copy of those gradients (P/N·m) and its float32 copy (4·P/N;
  in fp32 they are one), then the optimizer's temporaries. The reduced gradients'
  buffer is counted from the first bucket's reduction on every rank; a rank whose
  partition is reduced in a later bucket allocates it later, so with buckets smaller
  than the model the estimate can be above that rank's peak (1.3% seen).
- ``offload_optimizer``: the master copy, the optimizer states, the float32 gradient
  partition and a training-dtype copy of the partition live in (pinned) host memory,
  and the reduced gradients go there too; the GPU keeps one gradient buffer of the
  largest parameter.

- gradient accumulation (``gradient_accumulation_steps`` > 1), ZeRO-2: between
  the micro-batches of a step the buckets go and this process's reduced gradients
  stay, and the next micro-batches reduce into them; with ``offload_optimizer`` they
  are accumulated in host memory instead (the whole parameters that overlap the
  partition, in the training dtype). ZeRO-1 reduces only in a step's last
  micro-batch: before it the gradients accumulate whole (P·m) and the buckets stay
  allocated; the last micro-batch then reduces as without accumulation (checked
  against real runs with and without ``overlap_comm`` and ``offload_optimizer``: with
  offload too the whole gradients stay on the GPU between micro-batches).

Parameters are never partitioned below ZeRO-3. Each gradient goes into a bucket as
soon as it is computed (DeepSpeed's gradient hooks) with ZeRO-2, or ZeRO-1 with
``overlap_comm`` (with accumulation: in a step's last micro-batch); ZeRO-1 without it
keeps the whole gradients (P·m) until the backward ends and reduces them then.
ZeRO-3 (partitioned weights fetched module by module) is counted by running
DeepSpeed's own step instead (:mod:`mmsora.utils.zero3_memory`).
"""
from dataclasses import dataclass

import torch

__all__ = ['ZeroLayout']

_DTYPES = {'fp16': torch.float16, 'float16': torch.float16, 'half': torch.float16,
           'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
           'fp32': torch.float32, 'float32': torch.float32, 'float': torch.float32}


@dataclass(frozen=True)
class ZeroLayout:
    """A DeepSpeed ZeRO configuration on ``processes`` data-parallel GPUs."""
    stage: int
    processes: int
    dtype: torch.dtype                # what DeepSpeed casts the module to
    reduce_bucket_size: int           # elements
    overlap_comm: bool
    contiguous_gradients: bool
    offload_optimizer: bool

    @classmethod
    def from_config(cls, ds_config: dict, processes: int) -> 'ZeroLayout':
        """From a DeepSpeed config whose ``'auto'`` values are filled
        (:func:`mmsora.engine.strategies.fill_auto`)."""
        zero = ds_config.get('zero_optimization') or {}
        stage = int(zero.get('stage', 0))
        if stage not in (1, 2):
            raise ValueError(f'ZeRO stage {stage} is not modelled (1 and 2 are): '
                             + ('ZeRO-3 is counted by mmsora.utils.zero3_memory'
                                if stage == 3 else 'stage 0 is plain DeepSpeed data '
                                'parallelism'))
        if processes < 1:
            raise ValueError(f'processes must be >= 1, got {processes}')
        dtype = torch.float32
        for key, half in (('fp16', torch.float16), ('bf16', torch.bfloat16)):
            if (ds_config.get(key) or {}).get('enabled') is True:
                dtype = half
        accum = (ds_config.get('data_types') or {}).get('grad_accum_dtype')
        if accum is not None and _DTYPES.get(str(accum).lower()) != dtype:
            raise ValueError(f'data_types.grad_accum_dtype={accum!r} (gradient '
                             'accumulation in another dtype than the training one) is '
                             'not modelled')
        offload = (zero.get('offload_optimizer') or {}).get('device', 'none')
        offload = offload not in (None, 'none')
        return cls(stage=stage, processes=processes, dtype=dtype,
                   reduce_bucket_size=int(float(zero.get('reduce_bucket_size', 5e8))),
                   # DeepSpeed's default: on for ZeRO-3 only; our presets set it
                   overlap_comm=bool(zero.get('overlap_comm', False)),
                   contiguous_gradients=bool(zero.get('contiguous_gradients', True))
                   or offload,  # DeepSpeed forces it on for offload
                   offload_optimizer=offload)

    @property
    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def partition(self, trainable: int) -> int:
        """Elements of this process's partition of the flat trainable weights
        (DeepSpeed pads the flat buffer to a multiple of 2N)."""
        align = 2 * self.processes
        return -(-trainable // align) * align // self.processes

    def buckets(self) -> int:
        """Bytes of the gradient reduction buckets (held from a backward's first
        gradient to the step)."""
        if not self.contiguous_gradients:
            return 0
        return (1 + self.overlap_comm) * self.reduce_bucket_size * self.element_size

    def keeps_whole_gradients(self) -> bool:
        """ZeRO-1 without ``overlap_comm`` reduces only after the backward."""
        return self.stage == 1 and not self.overlap_comm

    def gradient_partition(self, sizes) -> int:
        """Bytes of the reduced gradients this process keeps to the step: the whole
        parameters (``sizes``: their element counts, in the optimizer's order) that
        overlap its partition of the flat buffer, on the worst rank; none on the GPU
        with ``offload_optimizer`` (they go to the host)."""
        if self.offload_optimizer:
            return 0
        return self.overlapping_gradients(sizes)

    def overlapping_gradients(self, sizes) -> int:
        """Bytes, in the training dtype, of the whole parameters that overlap this
        process's partition, on the worst rank. With ``offload_optimizer`` and
        gradient accumulation DeepSpeed accumulates them in pinned host memory
        (``accumulated_grads_in_cpu``) between the micro-batches of a step."""
        part = self.partition(sum(sizes))
        worst = 0
        for rank in range(self.processes):
            lo, hi = rank * part, (rank + 1) * part
            offset = kept = 0
            for n in sizes:
                if offset < hi and offset + n > lo:
                    kept += n
                offset += n
            worst = max(worst, kept)
        return worst * self.element_size
