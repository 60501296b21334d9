"""An EMA of the weights that averages in float32 whatever dtype the model trains in.

mmengine's ``ExponentialMovingAverage`` deep-copies the model, so the average has
the model's dtype. DeepSpeed with bf16 (``--deepspeed ... --amp``) turns the module
itself into bf16 (its fp32 master weights live in the optimizer), and an average
kept in bf16 cannot move: with DiT's momentum 1e-4, ``avg + 1e-4 * (w - avg)`` rounds
back to ``avg`` (bf16 keeps 8 bits of mantissa). This average is float32: each
update reads the (bf16) weights, converts them, and lerps in float32.
"""
import torch
from mmengine.model import ExponentialMovingAverage

from mmsora.registry import MODELS

__all__ = ['FP32ExponentialMovingAverage']


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
