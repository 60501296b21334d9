"""The activation-checkpointing knob shared by the transformer denoisers."""
from typing import Union


def check_checkpoint_every(grad_checkpointing: Union[bool, int]) -> Union[bool, int]:
    """Validate a ``grad_checkpointing`` argument: False/0 (off), True (every block)
    or an int k >= 1 (every k-th block, i.e. blocks 0, k, 2k, ...)."""
    if isinstance(grad_checkpointing, bool):
        return grad_checkpointing
    if not isinstance(grad_checkpointing, int) or grad_checkpointing < 0:
        raise ValueError('grad_checkpointing must be True/False or a block interval '
                         f'k >= 0 (checkpoint every k-th block), got {grad_checkpointing!r}')
    return grad_checkpointing
