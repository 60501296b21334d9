"""An EMA of the weights that averages in float32 whatever dtype the model trains in,
and the EMAHook that keeps it exact around validation.

mmengine's ``ExponentialMovingAverage`` deep-copies the model, so the average has
the model's dtype. DeepSpeed with bf16 (``--deepspeed ... --amp``) turns the module
itself into bf16 (its fp32 master weights live in the optimizer), and an average
kept in bf16 cannot move: with DiT's momentum 1e-4, ``avg + 1e-4 * (w - avg)`` rounds
back to ``avg`` (bf16 keeps 8 bits of mantissa). This average is float32: each
update reads the (bf16) weights, converts them, and lerps in float32. It averages
the module's bf16-rounded weights (not DeepSpeed's fp32 master copy). ``--deepspeed``
uses it only without ZeRO partitions (stage 0); ZeRO-1/2/3 average the fp32 master
partitions instead (``ShardedEMAHook``: mmsora/engine/zero_partition_ema.py,
mmsora/engine/sharded_ema.py).

mmengine's EMAHook swaps the average into the model for validation / test by
``copy_`` both ways, which would round a float32 average to the module's dtype at
every validation; :class:`FP32EMAHook` restores it exactly afterwards.

With gradient accumulation (``optim_wrapper.accumulative_counts = k``, or DeepSpeed's
``gradient_accumulation_steps``) mmengine's ``EMAHook`` moves the average after every
micro-batch, k times per optimizer step, towards weights that only change at the k-th:
DiT's 0.9999 decay would act as 0.9999^k per step, a k times shorter horizon. mmsora
registers its own :class:`EMAHook` under the same name, which ``type='EMAHook'``
builds in mmsora's scope (``default_scope = 'mmsora'``): mmengine's hook, updated only
after a micro-batch that stepped the optimizer, as diffusers' training scripts do
(``if accelerator.sync_gradients: ema.step(...)``). Without accumulation it is
mmengine's hook, update for update. ``type='mmengine.EMAHook'`` still builds
mmengine's own (``--fsdp`` / ``--deepspeed`` switch it to ``ShardedEMAHook`` /
``FP32EMAHook``, which update once per step like this one). The EMA's ``interval``
then counts optimizer steps; ``begin_iter`` still counts iterations (micro-batches),
as the Runner does.

``--load-from`` a DiT / fast-DiT / SiT training file continues its training: the model
starts from the file's ``'model'`` weights (``model.pretrained_entry='model'``) and
:class:`EMAHook`'s average from its ``'ema'`` weights (at ``before_train``), where
mmengine's average copies the model at its first update.
"""
import itertools
import logging

import torch
from mmengine.hooks import EMAHook as MMEngineEMAHook
from mmengine.logging import print_log
from mmengine.model import BaseAveragedModel, ExponentialMovingAverage

from mmsora.registry import HOOKS, MODELS

from .accumulation import optimizer_stepped

__all__ = ['EMAHook', 'FP32ExponentialMovingAverage', 'FP32EMAHook']


@HOOKS.register_module(name='EMAHook')
class EMAHook(MMEngineEMAHook):
    """mmengine's ``EMAHook`` (same arguments, checkpoint keys and swaps) that updates
    the average once per optimizer step under gradient accumulation
    (:func:`optimizer_stepped`); ``type='EMAHook'`` builds it in mmsora's scope."""

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if optimizer_stepped(runner):
            super().after_train_iter(runner, batch_idx, data_batch, outputs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._start_from_pretrained_ema()

    def _start_from_pretrained_ema(self) -> None:
        """A model that continues a DiT / fast-DiT / SiT training file (``--load-from``
        it: ``model.pretrained_entry='model'``, the denoiser from the file's trained
        weights): the average starts from the file's ``'ema'`` weights, as that run's
        train.py would have gone on, instead of copying the model at the first update.
        The average is the model's weights (what the first update copies) with the
        denoiser's from ``'ema'`` (inflated for a video model), and ``steps`` is 1, so
        the first update moves it by ``momentum``. Not with ``begin_iter`` /
        ``begin_epoch`` (the average follows the model until then), nor once the
        average has moved (a resume)."""
        model = self.src_model
        if (getattr(model, 'pretrained_entry', None) != 'model'
                or not getattr(model, 'pretrained_denoiser', None)
                or self.begin_iter or self.begin_epoch):
            return
        if not isinstance(self.ema_model, BaseAveragedModel):  # (ShardedEMAHook's)
            print_log(f"model.pretrained_entry='model': the {type(self.ema_model).__name__} "
                      "starts from the model's weights, not from the file's 'ema'",
                      logger='current', level=logging.WARNING)
            return
        if int(self.ema_model.steps) != 0:
            return
        source = model.state_dict() if self.ema_model.update_buffers else dict(
            model.named_parameters())
        for key, average in self.ema_model.avg_parameters.items():  # (the first update's
            average.data.copy_(source[key].data)  # copy: weights besides the denoiser's)
        if not self.ema_model.module.load_pretrained_denoiser('ema', entry_only=True):
            return  # not a training file: the first update copies the model, as it would
        self.ema_model.steps.fill_(1)
        print_log(f"EMAHook: the average starts from the 'ema' weights of "
                  f'{model.pretrained_denoiser}', logger='current')

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """``--load-from`` a run's checkpoint that kept an EMA: the model starts from
        its trained weights and the average from its average, as a resume has them.
        mmengine's hook loaded the checkpoint's ``state_dict``, which holds the EMA
        weights (it swaps them in to save), into both: a run continued on another
        number of processes (which ``--resume`` refuses) went on from the average, a
        young run's close to its initial weights. The hook runs before the model
        loads ``state_dict``; shapes the model does not take (a label table of other
        classes) are left as mmengine's loader leaves them, said in its log."""
        if runner._resume or 'ema_state_dict' not in checkpoint:
            return super().after_load_checkpoint(runner, checkpoint)
        from mmengine.runner.checkpoint import load_state_dict
        self._swap_ema_state_dict(checkpoint)  # state_dict: the trained weights now
        load_state_dict(self.ema_model, checkpoint['ema_state_dict'],
                        strict=self.strict_load, logger='current')


@MODELS.register_module()
class FP32ExponentialMovingAverage(ExponentialMovingAverage):
    """mmengine's ``ExponentialMovingAverage`` (same arguments, same state dict keys)
    with the averaged copy in float32. For an fp32 model it is the same thing."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.module.float()  # floating tensors only; integer buffers stay
        # mmengine keeps references to the copy's tensors: take them again.
        self.avg_parameters = (self.module.state_dict() if self.update_buffers
                               else dict(self.module.named_parameters()))

    def avg_func(self, averaged_param: torch.Tensor, source_param: torch.Tensor,
                 steps: int) -> None:
        averaged_param.lerp_(source_param.to(averaged_param.dtype), self.momentum)


@HOOKS.register_module()
class FP32EMAHook(EMAHook):
    """mmengine's ``EMAHook`` with :class:`FP32ExponentialMovingAverage` by default,
    and a float32 average that comes back unrounded after validation / test."""

    def __init__(self, ema_type: str = 'FP32ExponentialMovingAverage', **kwargs):
        super().__init__(ema_type=ema_type, **kwargs)
        self._kept = None  # the exact average while the model holds it

    def _average_tensors(self):
        module = self.ema_model.module
        return list(itertools.chain(module.parameters(), module.buffers())
                    if self.ema_model.update_buffers else module.parameters())

    def _swap_ema_parameters(self) -> None:
        """Swap as mmengine does (the hook calls it in pairs), then restore the
        average from an exact copy when swapping back."""
        average = self._average_tensors()
        if self._kept is None:  # the average goes into the model
            self._kept = [t.detach().clone() for t in average]
            super()._swap_ema_parameters()
        else:  # the trained weights come back; the average, exactly
            super()._swap_ema_parameters()
            for t, kept in zip(average, self._kept):
                t.data.copy_(kept)
            self._kept = None
