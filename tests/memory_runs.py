"""The image demo (configs/dit/dit_tiny2_1xb32_1500_shapes16.py): its config, its
model, and its counted ``tools/train.py`` runs on two gloo processes, which the memory
tests of FSDP, DeepSpeed ZeRO-1/2 and ZeRO-3 (tests/test_utils/test_{fsdp,zero,zero3}
_memory.py) compare their estimates with."""
import os.path as osp

from mmengine.config import Config

from tests.launch import counted_train_run
from tools import estimate_memory  # (the tool, for the tests)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

__all__ = ['BATCH', 'DEMO', 'FUSED', 'ROOT', 'SINGLE_TENSOR', 'counted_demo_run', 'demo_cfg',
           'demo_model', 'estimate_memory']

DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
BATCH = 8
# The optimizer is set in both the estimate and the run: on the CPU torch's AdamW goes
# one tensor at a time by default (its temporaries, over DeepSpeed's one flat
# partition too, can make the step's peak), while the estimate assumes CUDA's fused one.
SINGLE_TENSOR, FUSED = dict(foreach=False), dict(fused=True)


def demo_cfg(batch=BATCH, adamw=SINGLE_TENSOR, accumulate=1) -> Config:
    cfg = Config.fromfile(DEMO)
    cfg.train_dataloader.batch_size = batch
    cfg.optim_wrapper.optimizer.update(adamw)
    cfg.optim_wrapper.accumulative_counts = accumulate
    return cfg


def demo_model():
    """The demo's model (its denoiser and diffusion), built on the CPU."""
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    return MODELS.build(demo_cfg().model.to_dict())


def counted_demo_run(tmp_path, strategy_args, batch, adamw, amp, accumulate=1, iters=2,
                     processes=2) -> list:
    """``tools/train.py`` on the demo with ``strategy_args`` (``['--fsdp', 'fsdp']``,
    ``['--deepspeed', PRESET]``) on ``processes`` gloo processes, every tensor storage
    counted: per rank, the bytes alive when each iteration starts and its peak. No
    checkpoint is saved: the counts are of the training steps (saving gathers full
    state dicts, or the partitioned EMA, on rank 0)."""
    return counted_train_run(tmp_path, [
        DEMO, '--launcher', 'pytorch', *strategy_args, *(['--amp'] if amp else []),
        '--work-dir', str(tmp_path / 'work'),
        '--cfg-options', f'train_cfg.max_iters={iters}',
        'default_hooks.checkpoint.interval=100',
        'default_hooks.checkpoint.save_last=False',
        f'optim_wrapper.accumulative_counts={accumulate}',
        f'train_dataloader.batch_size={batch}',
        *(f'optim_wrapper.optimizer.{k}={v}' for k, v in adamw.items())], processes)
