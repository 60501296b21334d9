"""DeepSpeed checkpoint folders (``tools/train.py --deepspeed``) read without DeepSpeed's
engine: where the client state is, and the weights in mmengine's layout, so that
``tools/infer.py`` / ``tools/test.py`` sample a ZeRO run's work dir or folder directly
and ``tools/zero_to_state_dict.py`` writes the same thing to a file."""
import os.path as osp

import torch

__all__ = ['MODEL_STATES_FILES', 'zero_model_states', 'is_zero_checkpoint',
           'read_zero_checkpoint']

# The file of a DeepSpeed checkpoint folder that holds the client state (our hooks'
# entries, meta): ZeRO-1/2 write the first, ZeRO-3 one per data-parallel rank.
MODEL_STATES_FILES = ('mp_rank_00_model_states.pt',
                      'zero_pp_rank_0_mp_rank_00_model_states.pt')


def zero_model_states(path: str):
    """The client-state file of a DeepSpeed checkpoint folder, or None if ``path`` is
    not one."""
    for name in MODEL_STATES_FILES:
        if osp.isfile(osp.join(path, name)):
            return osp.join(path, name)
    return None


def is_zero_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint folder written by DeepSpeed (``--deepspeed``,
    any ZeRO stage)."""
    return zero_model_states(path) is not None


def read_zero_checkpoint(folder: str, trained: bool = True) -> dict:
    """A DeepSpeed checkpoint folder in mmengine's layout: ``{'state_dict': EMA
    weights, 'ema_state_dict': {'module.*': trained weights}, 'meta'}`` when the run
    kept an EMA, else ``{'state_dict': trained weights, 'meta'}``; float32.

    The EMA weights are the client state's, as the EMA hook saved them (float32). The
    trained weights are the float32 master weights, gathered from every process's
    optimizer file by DeepSpeed's ``zero_to_fp32`` (needs DeepSpeed installed, and
    reads the optimizer states: slow for large runs). With ``trained=False`` and an
    EMA they are left out, and only the client-state file is read.
    """
    # DeepSpeed's own files, written by the run: its loader reads them the same way.
    client = torch.load(zero_model_states(folder), map_location='cpu', weights_only=False)
    meta = {k: v for k, v in (client.get('meta') or {}).items() if k in ('seed', 'time')}
    meta.update(iter=client.get('global_steps'), converted_from=osp.abspath(folder))
    has_ema = 'ema_state_dict' in client
    ema = {k: v.float() for k, v in client['state_dict'].items()} if has_ema else None
    if has_ema and not trained:
        return dict(state_dict=ema, meta=meta)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    parent, tag = osp.split(osp.abspath(folder))
    weights = {k: v.contiguous() for k, v in
               get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag).items()}
    if not has_ema:  # no EMA: the trained weights
        return dict(state_dict=weights, meta=meta)
    # mmengine's layout: EMA weights in state_dict, the trained ones in ema_state_dict
    # (here the fp32 masters, not the module's 16-bit copies).
    return dict(state_dict=ema, ema_state_dict={f'module.{k}': v for k, v in weights.items()},
                meta=meta)
