"""FSDP through mmengine's FSDPStrategy: one FSDP unit per transformer block.

Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
VLDB 2023. The preset is ``configs/_base_/strategies/fsdp.py`` (``tools/train.py
--fsdp``).
"""
import torch.nn as nn
from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

from mmsora.registry import FUNCTIONS


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
