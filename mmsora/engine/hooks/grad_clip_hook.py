"""Clip gradients from a given iteration on (Latte's ``start_clip_iter``).

Latte's UCF-101 recipe trains without clipping and clips the gradient norm at 0.1 from
iteration 100,000 (``clip_max_norm: 0.1``, ``start_clip_iter: 100000`` in its
configs/ucf101/ucf101_train.yaml). mmengine's ``optim_wrapper.clip_grad`` clips from
the first step; this hook turns the same clipping on at ``begin``: before each
iteration from then on (a resumed run too) it sets what ``clip_grad=dict(max_norm=...)``
would have set on the optimizer wrapper, so the wrapper clips (and logs ``grad_norm``)
as one configured so from the start would. Under DeepSpeed, whose engine clips as its
config says for the whole run, it says so and does nothing.
"""
import torch
from mmengine.hooks import Hook

from mmsora.registry import HOOKS
from mmsora.utils.cli import UserError, note

__all__ = ['GradClipFromHook']


@HOOKS.register_module()
class GradClipFromHook(Hook):
    """Clip the gradient norm at ``max_norm`` from iteration ``begin`` on.

    Args:
        begin (int): First iteration (0-based, as ``runner.iter``) that clips.
        max_norm (float): Largest gradient norm, as ``clip_grad_norm_``'s.
        norm_type (float): The norm's order. Defaults to 2.
    """

    priority = 'NORMAL'

    def __init__(self, begin: int, max_norm: float, norm_type: float = 2.0):
        if not isinstance(begin, int) or begin < 0:
            raise ValueError(f'GradClipFromHook: begin is an iteration (>= 0), got {begin!r}')
        if not max_norm > 0:
            raise ValueError(f'GradClipFromHook: max_norm must be > 0, got {max_norm!r}')
        self.begin, self.max_norm, self.norm_type = begin, float(max_norm), float(norm_type)

    def before_train(self, runner):
        wrapper = runner.optim_wrapper
        self.active = hasattr(wrapper, 'clip_grad_kwargs')
        if not self.active:  # DeepSpeed's: its engine clips as its config says
            note(f'GradClipFromHook: {type(wrapper).__name__} clips as its strategy says '
                 '(DeepSpeed: gradient_clipping, for the whole run): the clipping from '
                 f'iteration {self.begin} (max_norm {self.max_norm:g}) is not applied')
            return
        if wrapper.clip_grad_kwargs:
            raise UserError(f'GradClipFromHook: optim_wrapper.clip_grad '
                            f'({wrapper.clip_grad_kwargs}) clips from the first step already: '
                            'give one or the other')

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        wrapper = runner.optim_wrapper
        if getattr(self, 'active', True) and runner.iter >= self.begin and \
                not wrapper.clip_grad_kwargs:
            # what OptimWrapper.__init__ sets for clip_grad=dict(max_norm=..., ...)
            wrapper.clip_func = torch.nn.utils.clip_grad_norm_
            wrapper.grad_name = 'grad_norm'
            wrapper.clip_grad_kwargs = dict(max_norm=self.max_norm, norm_type=self.norm_type)
            # under FSDP by the whole gradient's norm, as FSDPGradClipHook makes a
            # clip_grad of the config clip (it set it up before the run, when none was on)
            from mmsora.engine.strategies.fsdp import clip_by_whole_norm
            clip_by_whole_norm(wrapper, runner.model)
