"""FSDP through mmengine's FSDPStrategy: one FSDP unit per transformer block, and
gradient clipping by the whole gradient's norm (:class:`FSDPGradClipHook`), and
resume on current torch (:func:`mend_mmengine_fsdp`).

Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
VLDB 2023. The preset is ``configs/_base_/strategies/fsdp.py`` (``tools/train.py
--fsdp``).
"""
from functools import partial

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

from mmsora.registry import FUNCTIONS, HOOKS


def _block_classes():
    from mmsora.models.denoisers.dit import DiTBlock
    from mmsora.models.denoisers.video_dit import LatteBlock, STDiTBlock
    return {DiTBlock, LatteBlock, STDiTBlock}


@FUNCTIONS.register_module()
def transformer_block_wrap_policy(module: nn.Module, recurse: bool,
                                  nonwrapped_numel: int) -> bool:
    """FSDP auto-wrap policy: every DiT / VideoDiT block is its own FSDP unit (its
    parameters are gathered just for its forward and backward); the rest of the model
    (embedders, final layer) goes into the root unit."""
    return transformer_auto_wrap_policy(module, recurse, nonwrapped_numel,
                                        transformer_layer_cls=_block_classes())


def _clip_sharded_grad(optim_wrapper, model) -> None:
    """``OptimWrapper._clip_grad`` for an FSDP model: the norm of the whole gradient
    (``FSDP.clip_grad_norm_`` sums the shards' squares over the processes) on every
    process, logged as ``grad_norm``."""
    kwargs = dict(optim_wrapper.clip_grad_kwargs)
    norm = model.clip_grad_norm_(kwargs.pop('max_norm'), **kwargs)
    optim_wrapper.message_hub.update_scalar('train/grad_norm', float(norm))


@HOOKS.register_module()
class FSDPGradClipHook(Hook):
    """Clip by the norm of the whole gradient under FSDP (added by ``--fsdp``).

    mmengine's optimizer wrappers clip with ``torch.nn.utils.clip_grad_norm_`` over
    the parameters they hold, which under FSDP are this process's shards: each
    process would scale its shard by a different factor, from a norm that is not the
    gradient's (and log that). The wrapper's ``_clip_grad`` is replaced by
    ``FSDP.clip_grad_norm_`` for norm clipping; clipping by value is elementwise and
    stays as it is.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        clip_by_whole_norm(runner.optim_wrapper, runner.model)


def clip_by_whole_norm(wrapper, model) -> None:
    """Under FSDP, make an optimizer wrapper that clips by norm clip by the whole
    gradient's (``FSDP.clip_grad_norm_``); nothing otherwise. Also what
    ``GradClipFromHook`` calls when it turns clipping on mid-run."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    if not isinstance(model, FSDP) or not getattr(wrapper, 'clip_grad_kwargs', None):
        return
    if wrapper.clip_func is torch.nn.utils.clip_grad_norm_:
        wrapper._clip_grad = partial(_clip_sharded_grad, wrapper, model)


_OPTIMIZER_KEYS = ('state', 'param_groups')


def _optim_state_dict(self) -> dict:
    """``FSDPStrategy.optim_state_dict`` that keeps the optimizer wrapper's own entries
    (``AmpOptimWrapper``'s ``loss_scaler``): FSDP's gathered optimizer state holds only
    ``state`` and ``param_groups``, so a resumed fp16 / bf16 ``--amp`` run restarted
    from the initial loss scale."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    state = FSDP.optim_state_dict(self.model, self.optim_wrapper.optimizer)
    own = {k: v for k, v in self.optim_wrapper.state_dict().items()
           if k not in _OPTIMIZER_KEYS}
    return {**state, **own}


def _load_optim_state_dict(self, state_dict: dict) -> None:
    """``FSDPStrategy.load_optim_state_dict`` with torch >= 2.1's argument order, giving
    the wrapper back its own entries (see :func:`_optim_state_dict`)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    own = {k: v for k, v in state_dict.items() if k not in _OPTIMIZER_KEYS}
    optimizer_state = {k: v for k, v in state_dict.items() if k in _OPTIMIZER_KEYS}
    self.optim_wrapper.load_state_dict({**FSDP.optim_state_dict_to_load(
        model=self.model, optim=self.optim_wrapper.optimizer,
        optim_state_dict=optimizer_state), **own})


def _load_checkpoint_to_cpu(self, filename: str, **kwargs) -> dict:
    """``FSDPStrategy.load_checkpoint`` reading the file into CPU memory when mmengine
    asks for its 'default' device: FlexibleRunner's resume would otherwise put the
    whole checkpoint (weights, EMA, optimizer state of the full model) on every GPU
    before FSDP takes each process's shard of it."""
    from mmengine._strategy.fsdp import FSDPStrategy
    if kwargs.get('map_location') == 'default':
        kwargs['map_location'] = 'cpu'
    return FSDPStrategy._mmsora_load_checkpoint(self, filename, **kwargs)


def mend_mmengine_fsdp():
    """Mend mmengine 0.10.7's ``FSDPStrategy`` for resuming on current torch:

    - it calls ``FSDP.optim_state_dict_to_load(state_dict, model, optimizer)``, torch
      2.0's order; since torch 2.1 the model comes first, and resume failed with
      "unhashable type: 'dict'";
    - its optimizer state dropped the loss scaler's state (``--amp``);
    - resume loaded the checkpoint onto each GPU in full.

    Idempotent."""
    from mmengine._strategy.fsdp import FSDPStrategy
    # mmengine's loader, kept on the class itself once: a second mend (or this module
    # imported again) must not wrap our wrapper
    if '_mmsora_load_checkpoint' not in vars(FSDPStrategy):
        FSDPStrategy._mmsora_load_checkpoint = FSDPStrategy.load_checkpoint
    FSDPStrategy.optim_state_dict = _optim_state_dict
    FSDPStrategy.load_optim_state_dict = _load_optim_state_dict
    FSDPStrategy.load_checkpoint = _load_checkpoint_to_cpu
