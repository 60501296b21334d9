"""The model a sampling hook should draw from during training."""
from contextlib import contextmanager

from mmengine.hooks import EMAHook
from mmengine.model import is_model_wrapper

from mmsora.engine.strategies.deepspeed import partitions_weights

__all__ = ['sampling_model', 'ShardedSampler']


class ShardedSampler:
    """A sharded model seen as the model it wraps, except that ``sample`` goes through
    the sharding wrapper's forward (``mode='predict'`` with the sampling arguments),
    which gathers the weights as in a training step:

    - FSDP: the root unit gathers its own weights (embeddings, final layer, VAE) for
      the whole call and every block unit its own as it runs, with the strategy's
      mixed precision;
    - DeepSpeed ZeRO-3: the engine's forward gathers each submodule's parameters
      around its forward, and those a module reads outside its own (DiT's
      ``pos_embed`` in ``forward_with_cfg``, which calls ``self.forward``) when read
      (DeepSpeed's external parameters, found only inside the engine's forward).

    The all-gathers are collective: every process calls ``sample`` as often as the
    others (with the same inputs or not)."""

    sample_is_collective = True  # mass_sample: every process joins every batch

    def __init__(self, root, module):
        self._root, self._module = root, module

    def __getattr__(self, name):
        return getattr(self._module, name)

    @property
    def training(self) -> bool:
        return self._module.training

    def sample(self, **kwargs):
        return self._root(mode='predict', sample_kwargs=kwargs)

    def eval(self):
        self._root.eval()
        return self

    def train(self, mode: bool = True):
        self._root.train(mode)
        return self


@contextmanager
def sampling_model(runner, use_ema: bool = True):
    """EMAHook's averaged model when it runs and ``use_ema``, else the trained model,
    unwrapped from the DDP / DeepSpeed wrapper; under FSDP and ZeRO-3, where no
    process holds the whole model, a :class:`ShardedSampler`.

    Every process enters it: an average that is not a copy of the module
    (``ShardedEMAHook``'s; under DeepSpeed ZeRO-1/2 partitioned over the processes,
    :class:`~mmsora.engine.zero_partition_ema.ZeroPartitionEMA`) is put into the
    module on entering (under DeepSpeed an all-gather; under FSDP into each process's
    shards, under ZeRO-3 into each process's partitions) and the trained weights
    back, exactly, on leaving.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    root = runner.model
    model = root.module if is_model_wrapper(root) else root
    if isinstance(root, FSDP):
        model = ShardedSampler(root, model)
    elif partitions_weights(root):  # ZeRO-3: mmengine's wrapper of the engine
        model = ShardedSampler(root.model, model)
    ema = None
    if use_ema:
        for hook in runner.hooks:
            if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
                ema = hook.ema_model
                break
    if ema is None:
        yield model
    elif hasattr(ema, 'module'):  # mmengine's averaged copy
        yield ema.module
    else:
        ema.swap()
        try:
            yield model
        finally:
            ema.swap()

