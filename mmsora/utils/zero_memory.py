"""What DeepSpeed ZeRO-1 / ZeRO-2 keep per GPU beside the step's activations.

Read from DeepSpeed 0.19.8 (``deepspeed/runtime/engine.py``,
``deepspeed/runtime/zero/stage_1_and_2.py``) and checked against real runs
(``tests/test_utils/test_zero_memory.py``: two gloo processes, every tensor storage
counted). Per process, with P trainable parameters, N processes and m bytes per
element of the training dtype (2 for ``bf16`` / ``fp16``, 4 for fp32):

- the module: DeepSpeed casts every weight and buffer to the training dtype; the
  trainable ones live in one flat buffer (P·m, padded to a multiple of 2N);
- the float32 master copy of this process's partition: 4·P/N;
- the optimizer's states over that partition (AdamW: 8·P/N);
- gradient reduction buckets, from a backward's first gradient to the step:
  ``reduce_bucket_size`` elements in the training dtype, twice with ``overlap_comm``
  (``contiguous_gradients``, DeepSpeed's default). xtuner's presets keep DeepSpeed's
  5e8: 2 GiB in bf16 on every GPU, however small the model;
- ZeRO-2: this process's gradient partition (P/N·m) once the first bucket is
  reduced; at the step a float32 copy of it (4·P/N).
- ``offload_optimizer``: the master copy, the optimizer states, the float32 gradient
  partition and a training-dtype copy of the partition live in (pinned) host memory;
  the GPU keeps one gradient buffer of the largest parameter.

Parameters are never partitioned below ZeRO-3, so gradients arrive whole and each
goes into a bucket as soon as it is computed (DeepSpeed's gradient hooks): the
step's own gradients never accumulate in full. ZeRO-3 (partitioned weights fetched
module by module) is not modelled here.
"""
from dataclasses import dataclass

import torch

__all__ = ['ZeroLayout']

_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16, 'float32': torch.float32}


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
                             + ('ZeRO-3 fetches partitioned weights module by module'
                                if stage == 3 else 'stage 0 is plain DeepSpeed data '
                                'parallelism'))
        if processes < 1:
            raise ValueError(f'processes must be >= 1, got {processes}')
        dtype = torch.float32
        for key, half in (('fp16', torch.float16), ('bf16', torch.bfloat16)):
            if (ds_config.get(key) or {}).get('enabled') is True:
                dtype = half
        accum = (ds_config.get('data_types') or {}).get('grad_accum_dtype')
        if accum not in (None, 'fp16', 'bf16') and _DTYPES.get(accum) != dtype:
            raise ValueError(f'data_types.grad_accum_dtype={accum!r} (gradient '
                             'accumulation in another dtype) is not modelled')
        offload = (zero.get('offload_optimizer') or {}).get('device', 'none')
        return cls(stage=stage, processes=processes, dtype=dtype,
                   reduce_bucket_size=int(float(zero.get('reduce_bucket_size', 5e8))),
                   # DeepSpeed's default: on for ZeRO-3 only; our presets set it
                   overlap_comm=bool(zero.get('overlap_comm', False)),
                   contiguous_gradients=bool(zero.get('contiguous_gradients', True)),
                   offload_optimizer=offload not in (None, 'none'))

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

    def gradient_partition(self, trainable: int) -> int:
        """Bytes of ZeRO-2's reduced gradients of this process's partition."""
        return self.partition(trainable) * self.element_size if self.stage == 2 else 0
