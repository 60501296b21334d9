"""What ``--load-from`` (or ``--resume``) was given, read and checked before the Runner.

tools/train.py reads the file once (:func:`load_from_kind`, within
:func:`start_up_reads`) and checks it against the config's model, built on the meta
device, so that a checkpoint of another model is one line before the Runner's start-up
instead of a run from the initial weights (mmengine's loader is not strict) or a strict
load's failure in ``init_weights``. It also says what a run's checkpoint or a DiT /
fast-DiT / SiT training file gives the new run.
"""
import contextlib

from mmsora.utils.checkpoint_choice import check_checkpoint_complete
from mmsora.utils.cli import UserError, note

# What load_from_kind read within start_up_reads() (path -> its answer); None outside.
_start_up_reads = None


@contextlib.contextmanager
def start_up_reads():
    """Within it, :func:`load_from_kind` reads each file once: the start-up's checks of
    ``--resume`` (its layout, its model and objective, a complete run, the config
    changes since) read the checkpoint four times, each a parse of the whole pickle.
    At its end the answers are dropped, so that no checkpoint stays mapped into the
    training (a mapping keeps a pruned checkpoint's disk space)."""
    global _start_up_reads
    _start_up_reads = {}
    try:
        yield
    finally:
        _start_up_reads = None


def load_from_kind(path):
    """What ``--load-from`` (or ``--resume``) got, its mmengine state dict (None for a
    denoiser's) and the checkpoint itself (what the file holds; {} for a .safetensors
    file, not read here; ``meta`` holds the iteration it was saved at, ``optimizer``
    the optimizer's state):
    ``'run'`` (an mmengine checkpoint of a model like the config's), ``'image_run'``
    (an mmengine checkpoint of an image DiT run) or ``'denoiser'`` (an original DiT /
    fast-DiT / safetensors denoiser state dict). The file is mapped, not read whole;
    within :func:`start_up_reads`, once."""
    if _start_up_reads is None:
        return _read_kind(path)
    if path not in _start_up_reads:
        _start_up_reads[path] = _read_kind(path)
    return _start_up_reads[path]


def _read_kind(path):
    from mmsora.utils.checkpoint import load_checkpoint_file
    if path.endswith('.safetensors'):
        check_checkpoint_complete(path)  # cut short, or a torch file: before the Runner
        return 'denoiser', None, {}
    obj = load_checkpoint_file(path)
    if not (isinstance(obj, dict) and 'state_dict' in obj):
        return 'denoiser', None, obj if isinstance(obj, dict) else {}
    keys = obj['state_dict']
    if 'denoiser.pos_embed' in keys and 'denoiser.temp_embed' not in keys:
        return 'image_run', keys, obj
    return 'run', keys, obj


def check_load_from_matches(model, path, state_dict, option='--load-from'):
    """Refuse ``--load-from`` (or ``--resume``) of an mmengine checkpoint whose
    denoiser is not the config's (``model``, built on the meta device). mmengine's
    loader is not strict: for a checkpoint of another model (other widths or depth) it
    logged the mismatches and trained from the initial weights; at a resume the EMA
    hook's strict load failed with a 60-line traceback."""
    from mmsora.utils.weight_loading import (fine_tune_tables, say_tables_kept,
                                             state_dict_mismatch, tables_kept)
    ours, theirs = ({k: v.shape for k, v in state.items() if k.startswith('denoiser.')}
                    for state in (model.state_dict(), state_dict))
    # a fine-tune to another input size, frame count or class count: the fixed sin-cos
    # tables and the label table are the config's own (mmengine's loader keeps the
    # model's, printing its 'size mismatch' lines; the label table's is said here)
    fine_tune = option == '--load-from'
    found = state_dict_mismatch(model.denoiser, ours, theirs, fine_tune,
                                getattr(model, 'diffusion', None), own_name='config',
                                prefix='denoiser.')
    if found:  # (the loader's rule and words: a model's pretrained_denoiser says the same)
        raise UserError(f'{option} {path}: its denoiser is not the config\'s: {found}')
    fixed = {f'denoiser.{k}' for k in fine_tune_tables(model.denoiser)} if fine_tune else set()
    kept = [k[len('denoiser.'):] for k in tables_kept(ours, theirs, fixed)]
    if kept:  # (mmengine's loader keeps them, printing its 'size mismatch' lines)
        say_tables_kept(f'{option} {path}', {k: ours[f'denoiser.{k}'] for k in kept},
                        {k: theirs[f'denoiser.{k}'] for k in kept}, kept)


def denoiser_weights(path, checkpoint, prefix=None):
    """The denoiser's weights in a ``--load-from`` file, from ``checkpoint`` (what
    :func:`load_from_kind` read; read here where it did not: a .safetensors file),
    or None where the load itself will say what is wrong (in ``init_weights``)."""
    from mmsora.utils.checkpoint import load_checkpoint_file
    from mmsora.utils.weight_loading import extract_state_dict
    try:
        return extract_state_dict(checkpoint or load_checkpoint_file(path), prefix=prefix)
    except (KeyError, ValueError):
        return None


def check_denoiser_file_matches(model, path, checkpoint=None) -> None:
    """Refuse ``--load-from`` of a denoiser's weights alone (a DiT / fast-DiT file, an
    exported .pt / .safetensors, a diffusers DiT folder) of another model, before the
    Runner: the denoiser's strict load refused it in ``init_weights``, after about 240
    lines of start-up and with a work dir made. The fixed sin-cos tables and the label
    table may differ (another input size or class count: a fine-tune)."""
    from mmsora.utils.weight_loading import state_dict_mismatch
    state = denoiser_weights(path, checkpoint)
    if state is None:
        return
    ours = {k: v.shape for k, v in model.denoiser.state_dict().items()}
    theirs = {k: v.shape for k, v in state.items()}
    # the rule and the words of the load in init_weights (load_state_dict_checked)
    found = state_dict_mismatch(model.denoiser, ours, theirs, fine_tune=True,
                                objective=getattr(model, 'diffusion', None), own_name='config')
    if found:
        raise UserError(f'--load-from {path}: its weights are not the config\'s denoiser: '
                        f'{found}')


def check_inflation_matches(model, path, kind, checkpoint=None) -> None:
    """Refuse ``--load-from`` of an image DiT (a file, or an image run's checkpoint)
    that the config's video model cannot inflate (another depth, learn_sigma, width),
    before the Runner: the denoiser's inflation refused it in ``init_weights``, after
    about 240 lines of start-up and with a work dir made. A video DiT's own file is
    left to its strict load."""
    from mmsora.models.denoisers.video_dit import checked_inflation
    state = denoiser_weights(path, checkpoint, 'denoiser.' if kind == 'image_run' else None)
    if state is None or 'temp_embed' in state or not hasattr(model.denoiser,
                                                             'load_image_dit'):
        return
    try:
        checked_inflation(state, model.denoiser)
    except ValueError as e:
        raise UserError(f'--load-from {path}: {e}') from None


def note_load_from_run(args, checkpoint) -> None:
    """Say what ``--load-from`` takes from a run's checkpoint and what starts afresh
    (mmengine's log said only 'Load checkpoint from ...')."""
    done = (checkpoint.get('meta') or {}).get('iter')
    saved = f' (iteration {done})' if done else ''
    if 'ema_state_dict' not in checkpoint:
        takes = f'its weights{saved}'
    elif args.fsdp:  # (ShardedEMAHook: the weights mmengine loads, the average)
        takes = f'its EMA weights{saved}, the EMA too'
    else:
        takes = f'its trained weights{saved}, the EMA from its EMA'
    note(f'--load-from {args.load_from}: the model starts from {takes}; the optimizer '
         'state, the schedule and the data order start afresh (--resume keeps them)')


def start_from_training_file(cfg, path, checkpoint) -> None:
    """``--load-from`` a DiT / fast-DiT / SiT training file (``{'model', 'ema', 'opt',
    'args'}``) continues its training: the model from its 'model' weights
    (``model.pretrained_entry``), mmsora's EMA hook's average from its 'ema' weights
    (``EMAHook.before_train``); with no EMA hook, 'model' alone. Both started from 'ema'
    (as from a released file, a plain state dict), which threw the run's trained weights
    away. Where the EMA starts from the model's weights whatever the file (--deepspeed /
    --fsdp: their EMA, ShardedEMAHook, holds shards of the wrapped model; mmengine's own
    EMAHook; a ``begin_iter``) both still start from 'ema', the weights the file's
    authors sample with. Its optimizer state ('opt') is never used: mmengine's optimizer
    and schedule start afresh. Said in one note."""
    from mmengine.hooks import Hook

    from mmsora.engine.ema import EMAHook
    from mmsora.utils.trained_settings import training_file_kind
    from mmsora.utils.training_inputs import hook_class, is_ema_hook
    who = training_file_kind(checkpoint)
    start = f'--load-from {path}: a {who} training file:'
    opt = "its 'opt' (optimizer state) is not used: the optimizer starts afresh"
    hook = next((h for h in cfg.get('custom_hooks') or [] if is_ema_hook(h)), None)
    if hook is None:
        cfg.model.pretrained_entry = 'model'
        note(f"{start} the model starts from its 'model' weights (the trained ones); its "
             "'ema' weights are not used (the config keeps no EMA: no EMAHook in "
             f'custom_hooks); {opt}')
        return
    settings = vars(hook) if isinstance(hook, Hook) else hook  # (a hook given built)
    begin = next((f'{k}={settings[k]}' for k in ('begin_iter', 'begin_epoch')
                  if settings.get(k)), None)
    if cfg.get('runner_type') == 'FlexibleRunner':
        why = "with --deepspeed / --fsdp the EMA starts from the model's weights"
    elif not issubclass(hook_class(hook), EMAHook):
        why = ("mmengine's EMAHook starts from the model's weights; type='EMAHook' "
               "(mmsora's) starts from its 'ema' and the model from its 'model'")
    elif begin:
        why = f'the EMA follows the model until {begin}'
    else:
        cfg.model.pretrained_entry = 'model'
        note(f"{start} its training continues: the model starts from its 'model' weights, "
             f"the EMA from its 'ema' weights; {opt}")
        return
    note(f"{start} the model starts from its 'ema' weights (the ones {who.split()[0]} "
         f"samples with), the EMA from the same ({why}); its 'model' weights are not "
         f'used; {opt}')
