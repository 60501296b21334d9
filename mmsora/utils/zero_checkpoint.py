"""DeepSpeed checkpoint folders (``tools/train.py --deepspeed``) read without DeepSpeed's
engine: where the client state is, and the weights in mmengine's layout, so that
``tools/infer.py`` / ``tools/test.py`` sample a ZeRO run's work dir or folder directly
and ``tools/zero_to_state_dict.py`` writes the same thing to a file."""
import os
import os.path as osp

__all__ = ['MODEL_STATES_FILES', 'zero_model_states', 'is_zero_checkpoint',
           'zero_checkpoint_stage', 'zero_checkpoint_world_size', 'load_deepspeed_file',
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


def zero_checkpoint_stage(path: str):
    """3 for a ZeRO-3 checkpoint folder (model states per rank), 1 for ZeRO-1/2 (one
    model-states file; the two lay out their optimizer states alike), None if
    ``path`` is not a DeepSpeed checkpoint folder."""
    found = zero_model_states(path)
    if found is None:
        return None
    return 3 if osp.basename(found) == MODEL_STATES_FILES[1] else 1


def zero_checkpoint_world_size(path: str):
    """How many data-parallel processes saved a DeepSpeed checkpoint folder: one
    optimizer-states file each (``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt``,
    every ZeRO stage); None where there are none."""
    import glob
    ranks = {osp.basename(f).split('zero_pp_rank_')[1].split('_')[0]
             for f in glob.glob(osp.join(glob.escape(path), '*zero_pp_rank_*_optim_states.pt'))}
    return len(ranks) or None


# What DeepSpeed pickles into its checkpoint files besides tensors and plain
# containers: data-only classes, allowed for torch's weights-only loader.
_DEEPSPEED_GLOBALS = (
    ('mmengine.config', 'ConfigDict'),  # the client state's mmengine meta
    ('deepspeed.runtime.fp16.loss_scaler', 'LossScaler'),
    ('deepspeed.runtime.fp16.loss_scaler', 'DynamicLossScaler'),
    ('deepspeed.runtime.zero.config', 'ZeroStageEnum'),
    ('deepspeed.utils.tensor_fragment', 'fragment_address'),
)


def _safe_globals() -> list:
    import importlib
    found = []
    for module, name in _DEEPSPEED_GLOBALS:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return found


def load_deepspeed_file(path: str, mmap: bool = True):
    """A file of a DeepSpeed checkpoint folder, read by torch's weights-only loader
    (:func:`~mmsora.utils.checkpoint.load_checkpoint_file`, with
    :data:`_DEEPSPEED_GLOBALS` allowed, the file mapped: the EMA weights of the
    client state are read without the module weights beside them): a crafted folder
    cannot run code, as with every checkpoint mmsora reads."""
    from mmsora.utils.checkpoint import load_checkpoint_file
    return load_checkpoint_file(path, safe_globals=_safe_globals(), mmap=mmap)


def read_zero_checkpoint(folder: str, trained: bool = True) -> dict:
    """A DeepSpeed checkpoint folder in mmengine's layout: ``{'state_dict': EMA
    weights, 'ema_state_dict': {'module.*': trained weights, 'steps': the EMA's
    updates}, 'meta'}`` when the run kept an EMA, else ``{'state_dict': trained
    weights, 'meta'}``; float32.

    The EMA weights are the client state's, as the EMA hook saved them (float32). The
    trained weights are the float32 master weights, gathered from every process's
    optimizer file by DeepSpeed's ``zero_to_fp32`` (needs DeepSpeed installed, and
    reads the optimizer states: slow for large runs). With ``trained=False`` and an
    EMA they are left out, and only the client-state file is read: ``ema_state_dict``
    then holds the EMA's count alone (``{'steps': ...}``, as the hook saved it), so
    that what reads the result (which weights, how young an EMA: tools/infer.py,
    tools/export_denoiser.py) reads it here, not the client-state file again.
    """
    client = load_deepspeed_file(zero_model_states(folder))
    # mmengine's meta, plain values only (the RNG states and message hub stay out):
    # iter counts mmengine's iterations (DeepSpeed's global_steps, optimizer steps,
    # differ with gradient accumulation); cfg lets tools rebuild the model
    saved = client.get('meta') or {}
    meta = {k: v for k, v in saved.items()
            if k in ('seed', 'time', 'cfg', 'epoch', 'iter', 'experiment_name')}
    meta.setdefault('iter', client.get('global_steps'))
    meta['converted_from'] = osp.abspath(folder)
    has_ema = 'ema_state_dict' in client
    ema = ({k: v.float() if v.is_floating_point() else v
            for k, v in client['state_dict'].items()} if has_ema else None)
    if has_ema and not trained:
        steps = client['ema_state_dict'].get('steps')
        return dict(state_dict=ema, meta=meta,
                    ema_state_dict={} if steps is None else {'steps': steps})
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    # zero_to_fp32 unpickles every file of the folder without restriction: each one
    # passes the weights-only loader first (memory-mapped: the pickle alone is read)
    for name in sorted(os.listdir(folder)):
        if name.endswith('.pt'):
            load_deepspeed_file(osp.join(folder, name), mmap=True)
    parent, tag = osp.split(osp.abspath(folder))
    weights = {k: v.contiguous() for k, v in
               get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag).items()}
    # ZeRO-1 checkpoints hold no fragments of frozen parameters (DeepSpeed writes them
    # from stage 2 on): they never move, so the module's own copy is theirs.
    for key, value in (client.get('module') or {}).items():
        if key not in weights:
            weights[key] = value.float() if value.is_floating_point() else value
    if not has_ema:  # no EMA: the trained weights
        return dict(state_dict=weights, meta=meta)
    # mmengine's layout: EMA weights in state_dict, the trained ones in ema_state_dict
    # (here the fp32 masters, not the module's 16-bit copies), with the EMA's count of
    # updates as the hook saved it: tools/infer.py judges a young EMA by it, and
    # --load-from goes on averaging from it (it was left out: neither could)
    trained_state = {f'module.{k}': v for k, v in weights.items()}
    if 'steps' in client['ema_state_dict']:
        trained_state['steps'] = client['ema_state_dict']['steps']
    return dict(state_dict=ema, ema_state_dict=trained_state, meta=meta)
