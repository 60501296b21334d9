"""Training-engine pieces mmengine lacks, and mends for mmengine on current torch."""
from .atomic_checkpoint import CheckpointWriteError, make_checkpoints_atomic
from .compat import make_mmengine_checkpoints_loadable, init_cpu_distributed
from .accumulation import accumulation_steps, optimizer_stepped
from .ema import EMAHook, FP32EMAHook, FP32ExponentialMovingAverage
from .sharded_ema import ShardedEMA, ShardedEMAHook, ZeroShardedEMA
from .zero_partition_ema import ZeroPartitionEMA
from .hooks import *  # noqa: F401,F403
from .optimizers import *  # noqa: F401,F403
from .strategies import *  # noqa: F401,F403

# Resume must work whenever mmsora is in use, not only through tools/train.py.
make_mmengine_checkpoints_loadable()
# Checkpoints are written to a temporary file and renamed (see atomic_checkpoint).
make_checkpoints_atomic()
# FSDP resume with torch >= 2.1's argument order (strategies/fsdp.py).
mend_mmengine_fsdp()
