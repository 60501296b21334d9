"""Train a model from a config: ``python tools/train.py CONFIG [options]``.

The OpenMMLab command line (see ``--help``); several GPUs or nodes go through
``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``.
"""
import argparse
import contextlib
import errno
import math
import os
import os.path as osp
import sys

import torch

from mmsora.datasets.store_checks import (check_latent_store, check_stores_exist,
                                          note_video_dataset_fps)
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.checkpoint_choice import check_checkpoint_complete
from mmsora.utils.cli import (ArgumentParser, Interrupted, RunError, UserError, add_malloc_option,
                              add_note, check_output_path, check_torchrun_launcher,
                              is_launch_rank0, keep_freed_memory_on_cpu, note, run_cli)
from mmsora.utils.config_loading import load_config, parse_config_and_preset
from mmsora.utils.error_messages import explain_error
from mmsora.utils.trained_settings import config_objective, trained_config, trained_objective


def parse_args(argv=None):
    parser = ArgumentParser(description='Train an mmsora model')
    parser.add_argument('config', nargs='?', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the '
                        'work dir when no CKPT is given (optimizer, EMA, iteration, RNG)')
    parser.add_argument('--load-from', help='initialise the weights from CKPT only '
                        '(fresh optimizer and schedule): a checkpoint file, a work dir (its '
                        'newest) or a diffusers DiT folder')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: AmpOptimWrapper (bf16 where supported, '
                        'else fp16 with loss scaling) on CUDA, bf16 autocast on CPU')
    parser.add_argument('--deepspeed', metavar='PRESET',
                        help='DeepSpeed ZeRO through FlexibleRunner: deepspeed_zero1, '
                        'deepspeed_zero2, deepspeed_zero2_offload, deepspeed_zero3, '
                        'deepspeed_zero3_offload (configs/_base_/strategies), a preset '
                        'file (.py), or a DeepSpeed JSON config (.json)')
    parser.add_argument('--fsdp', nargs='?', const='fsdp', metavar='PRESET',
                        help='PyTorch FSDP through FlexibleRunner: fsdp (the default), '
                        'fsdp_bf16 (bf16 compute from float32 shards; '
                        'configs/_base_/strategies) or a file')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the denoiser (CompileDenoiserHook)')
    parser.add_argument('--no-tf32', action='store_true',
                        help='keep float32 matmuls in full fp32 on Ampere and newer '
                        'GPUs (default there: TF32)')
    add_malloc_option(parser)
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_iters=1000 '
                        "model.denoiser.depth=4 'optim_wrapper.optimizer.lr=2e-4'")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    check_amp_takes_no_value(sys.argv[1:] if argv is None else list(argv))
    args = parse_config_and_preset(parser, argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


# What one might give --amp as a value (argparse said 'unrecognized arguments: fp16').
AMP_VALUES = ('fp16', 'float16', 'half', 'bf16', 'bfloat16', 'fp32', 'float32')


def check_amp_takes_no_value(argv) -> None:
    """``--amp fp16`` / ``--amp=bf16``: refused in one line saying how the dtype is
    chosen."""
    for i, arg in enumerate(argv):
        value = (arg[len('--amp='):] if arg.startswith('--amp=')
                 else argv[i + 1] if arg == '--amp' and i + 1 < len(argv) else None)
        if value is not None and (arg != '--amp' or value.lower() in AMP_VALUES):
            raise UserError(f'--amp takes no value (got {value}): it trains in bfloat16 '
                            'where the GPU has it, else float16; for float16: --amp '
                            '--cfg-options optim_wrapper.dtype=float16')


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


def build_model_on_meta(cfg):
    """The config's model built on the meta device (no memory, no files read: weights
    load later, in init_weights), or None when that fails for a reason that is not a
    config mistake (the Runner builds it again and shows it). A config mistake in the
    model (an unknown type or key, a missing argument) is one line now, before the
    Runner prints the environment and the config and makes the work dir."""
    import copy

    import mmsora.models  # noqa: F401  (registers the modules)
    from mmsora.registry import MODELS
    try:
        with torch.device('meta'):
            return MODELS.build(copy.deepcopy(cfg.model))
    except (KeyError, TypeError, ValueError) as e:  # the registry's, the constructors'
        # and the model's own consistency checks (latent_shape vs in_channels, ...)
        message = explain_error(e)
        if message is not None:
            raise UserError(message) from None
    except Exception:  # e.g. something the meta device cannot do
        pass
    return None


def note_missing_hooks(cfg) -> None:
    """A config's own ``custom_hooks`` list replaces its base's whole (mmengine merges
    dicts, not lists): a list of one SampleVisualizationHook dropped the EMA and the
    RNG states that every mmsora config keeps, without a word."""
    from mmsora.engine.hooks import RNGStateHook
    from mmsora.utils.training_inputs import hook_class, is_ema_hook
    hooks = cfg.get('custom_hooks') or []
    missing = []
    if not any(is_ema_hook(h) for h in hooks):
        missing.append('no EMAHook (no EMA weights: checkpoints hold the trained weights, '
                       'which infer samples)')
    if not any(issubclass(hook_class(h), RNGStateHook) for h in hooks):
        missing.append('no RNGStateHook (a --resume draws other noise than the run would '
                       'have)')
    if missing:
        note(f'custom_hooks has {" and ".join(missing)}; a config\'s custom_hooks list '
             "replaces its base's whole: list them too if they were meant "
             '(configs/_base_/default_runtime.py)', once=True)


def check_vae_folder(model) -> None:
    """The VAE's folder (``model.vae.pretrained_path``) against what it holds, from its
    config.json, before the run: the VAE loads only when samples are decoded, so a T5
    folder given as the VAE trained a whole run before tools/infer.py named it."""
    check = getattr(getattr(model, 'vae', None), 'check_folder', None)
    if check is not None:
        try:
            check()
        except ValueError as e:  # (a message naming its own key, e.g. decoder_subfolder,
            #  is not put under pretrained_path)
            named = 'model.vae.' in str(e)
            raise UserError(str(e) if named else f'model.vae.pretrained_path: {e}') from None


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


def note_learning_rate_kept(cfg, path, optimizer_state, option='--resume') -> None:
    """Say that ``--resume`` keeps the checkpoint's learning rate when the config asks
    for another: mmengine restores the optimizer's state, its learning rate (and the
    schedule's base) included, so a changed ``optim_wrapper.optimizer.lr`` went
    unused without a word. A note on stderr (it was printed on stdout, unlike the
    schedule's)."""
    if (cfg.get('optim_wrapper') or {}).get('paramwise_cfg'):
        return  # per-group multipliers: the groups' rates are not the config's lr
    ours = ((cfg.get('optim_wrapper') or {}).get('optimizer') or {}).get('lr')
    groups = (optimizer_state or {}).get('param_groups') if isinstance(
        optimizer_state, dict) else None
    if not (isinstance(ours, (int, float)) and groups and isinstance(groups[0], dict)):
        return
    theirs = groups[0].get('initial_lr', groups[0].get('lr'))
    if isinstance(theirs, (int, float)) and not math.isclose(theirs, ours, rel_tol=1e-6):
        note(f'{option} {path} keeps its learning rate ({theirs:g}); the config\'s '
             f'optim_wrapper.optimizer.lr={ours:g} is not used (mmengine resumes the '
             'optimizer\'s state). To train on at the new rate, start a run from these '
             'weights: --load-from')


# Schedule settings a resumed scheduler's state holds (mmengine restores them all).
_SCHEDULE_KEYS = ('begin', 'end', 'eta_min', 'eta_min_ratio', 'start_factor', 'end_factor',
                  'factor', 'gamma', 'milestones', 'power', 'step_size')


def note_schedule_kept(cfg, path, scheduler_states, option='--resume') -> None:
    """Say that ``--resume`` keeps the checkpoint's schedule where the config's
    differs: mmengine restores each scheduler's state, its ``end`` and ``eta_min``
    included, so a run extended with ``param_scheduler.1.end=N`` went on along the
    old curve without a word (and the ``train_cfg.max_iters`` note advised just that)."""
    schedulers = cfg.get('param_scheduler') or []
    schedulers = [schedulers] if isinstance(schedulers, dict) else list(schedulers)
    if not isinstance(scheduler_states, list):
        return  # (several optimizer wrappers: a dict of lists; not ours)
    changed = []
    for i, (entry, state) in enumerate(zip(schedulers, scheduler_states)):
        if not (isinstance(entry, dict) and isinstance(state, dict)):
            continue
        for key in _SCHEDULE_KEYS:
            if key in entry and key in state and entry[key] != state[key]:
                changed.append((f'param_scheduler.{i}.{key}', state[key], entry[key]))
    if changed:
        shown = ', '.join(f'{name}={theirs!r} (config: {ours!r})'
                          for name, theirs, ours in changed[:3])
        note(f'{option} {path} keeps its schedule: {shown}{", ..." if len(changed) > 3 else ""} '
             '(mmengine resumes the schedulers\' state). To train on a new schedule, start '
             'a run from these weights: --load-from')


def check_resume_matches(cfg, model, path, option='--resume') -> None:
    """Refuse ``--resume`` of a file that is not a checkpoint of a run like the
    config's: an original DiT / fast-DiT state dict (nothing to resume: no optimizer,
    no iteration), a run of another model, or one saved past ``train_cfg.max_iters``.
    One saved at the run's end is said to leave nothing to train (mmengine resumed,
    trained nothing and said nothing); the Runner still runs the hooks' ends (a final
    evaluation that failed before). ``option``: what asked to resume, as the messages
    name it (a config's ``resume = True`` with its ``load_from``)."""
    kind, state_dict, checkpoint = load_from_kind(path)
    if kind == 'denoiser':
        start = (f'--load-from {path}' if option == '--resume' else
                 'resume = False (load_from then starts a run from it)')
        if 'opt' in checkpoint and ('ema' in checkpoint or 'model' in checkpoint):
            from mmsora.utils.trained_settings import training_file_kind
            # name the path_type; it was called a DiT file)
            raise UserError(f'{option} {path}: a {training_file_kind(checkpoint)} training '
                            "checkpoint (model, ema, opt): its optimizer state and step are "
                            f"not mmsora's to resume; start from its weights with {start} "
                            "(the model from its 'model' weights, the EMA from its 'ema')")
        raise UserError(f'{option} {path}: a state dict of weights alone, not a checkpoint '
                        f'of a run (no optimizer, no iteration): start from it with {start}')
    if model is not None:
        check_load_from_matches(model, path, state_dict, option=option)
    theirs, ours = trained_objective(checkpoint), config_objective(cfg.get('model'))
    if theirs and ours and theirs != ours:  # (it resumed, and trained on, silently)
        raise UserError(f'{option} {path}: saved by a run of the {theirs} objective, this '
                        f'config trains {ours}: resume with the config it was trained with '
                        '(the .py in its work dir), or start from its weights with '
                        '--load-from')
    from mmsora.utils.trained_settings import (checkpoint_objective, objective_differences,
                                               objective_settings, said_objective_differences)
    differ = objective_differences(checkpoint_objective(checkpoint),
                                   objective_settings(cfg.get('model')))
    if differ:  # (a timestep_convention=dit fine-tune resumed as 'sit' trained on
        # from weights that read another time: silently)
        was, now, options = said_objective_differences(differ)
        raise UserError(f'{option} {path}: saved by a run trained with {was}, this config '
                        f'trains with {now}: resume as it was trained (--cfg-options '
                        f'{options}), or start from its weights with --load-from')
    note_learning_rate_kept(cfg, path, checkpoint.get('optimizer'), option)
    note_schedule_kept(cfg, path, checkpoint.get('param_schedulers'), option)
    meta = checkpoint.get('meta') or {}
    done, last = meta.get('iter'), (cfg.get('train_cfg') or {}).get('max_iters')
    if not (isinstance(done, int) and isinstance(last, int) and done >= last):
        return
    if done > last:
        raise UserError(f'{option} {path}: saved at iteration {done}, past train_cfg.'
                        f'max_iters={last}: give a larger train_cfg.max_iters to train on')
    if is_launch_rank0():
        print(f'{option} {path}: saved at iteration {done}, which is train_cfg.max_iters: '
              'the run is complete and there is nothing to train (give a larger '
              'train_cfg.max_iters to train on)', flush=True)


# What a resume takes from this run's config, not from the checkpoint: a change made
# since the checkpoint's run changes the training from the resume on.
# (optim_wrapper and param_scheduler: note_learning_rate_kept / note_schedule_kept)
_RESUME_COMPARED = ('custom_hooks', 'sample_cfg', 'model.diffusion')


def _plain(value):
    """``value`` with ConfigDicts as dicts and tuples as lists (a dumped config's
    text gives back lists)."""
    if hasattr(value, 'to_dict'):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _said_difference(theirs, ours):
    """``(theirs, ours)`` in words, shortened to what differs: a dict's differing
    keys, a hook list's types."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        keys = [k for k in {**theirs, **ours} if theirs.get(k, ...) != ours.get(k, ...)]
        keys = keys[:3] if keys != ['type'] else ['type']

        def side(d):
            return ', '.join(f'{k}={_short(d[k], 40)}' if k in d else f'no {k}'
                             for k in keys) or 'nothing'
        return side(theirs), side(ours)

    def types(v):
        return (isinstance(v, list) and all(isinstance(e, dict) for e in v)
                and [e.get('type') for e in v])
    if types(theirs) is not False and types(ours) is not False and types(theirs) != types(ours):
        return (f'[{", ".join(map(str, types(theirs)))}]',
                f'[{", ".join(map(str, types(ours)))}]')
    return _short(theirs), _short(ours)


def note_resumed_config_changes(cfg, path, checkpoint, option='--resume') -> None:
    """Say which of this run's settings a resume takes from the config
    (:data:`_RESUME_COMPARED`) differ from those of the run that saved the checkpoint
    (its ``meta.cfg``), one line each: a config changed since (a hook added, another
    cfg_scale) went on without a word. Also that a Transport checkpoint of an mmsora
    that did not record its version resumes with losses that differ from the
    uninterrupted run's."""
    meta = checkpoint.get('meta') or {}
    if config_objective(cfg.get('model')) == 'Transport' and 'mmsora_version' not in meta:
        note(f'{option} {path}: saved by an older mmsora, whose Transport loss drew t before '
             'the noise; the loss now draws the noise first (SiT\'s order), so the losses '
             'after the resume will not match an uninterrupted run exactly; training is '
             'otherwise unaffected')
    saved = trained_config(checkpoint)
    if saved is None:
        return
    missing = object()

    def entry(config, key):
        for part in key.split('.'):
            if not isinstance(config, dict) or part not in config:
                return missing
            config = config[part]
        return _plain(config)
    for key in _RESUME_COMPARED:
        theirs, ours = entry(saved, key), entry(cfg.to_dict(), key)
        if theirs == ours:
            continue
        theirs, ours = _said_difference(None if theirs is missing else theirs,
                                        None if ours is missing else ours)
        note(f'{option} {path}: {key} changed since the checkpoint: the checkpoint\'s run '
             f'had {theirs}; this run has {ours}')


def latest_checkpoint(work_dir):
    """The checkpoint ``--resume`` (without CKPT) continues from, or None to start
    afresh; fails early, naming it, if it is unusable. The work dir's own file comes
    first (mmengine's lookup took the absolute path in ``last_checkpoint``: a copied
    work dir resumed from the original's checkpoint)."""
    from mmsora.utils.checkpoint_choice import saved_checkpoint
    try:
        latest = saved_checkpoint(work_dir)
    except FileNotFoundError as e:
        named = getattr(e, 'earlier', None)  # (an earlier checkpoint to take, named)
        raise UserError(f'--resume: {e}' + ('' if named else '; pass --resume CKPT to pick '
                                                              'a checkpoint')) from None
    if latest is None:
        return None  # nothing saved yet: mmengine starts the run afresh
    from mmsora.engine.strategies import is_zero_checkpoint
    if is_zero_checkpoint(latest):
        return latest  # a DeepSpeed checkpoint folder (--deepspeed): DeepSpeed checks it
    check_checkpoint_complete(latest)
    return latest


def earlier_checkpoint(work_dir):
    """The newest checkpoint an earlier run left in ``work_dir`` (the one its
    ``last_checkpoint`` names, else the highest ``iter_N.pth`` / ``epoch_N.pth``, a
    file or a DeepSpeed folder), or None."""
    from mmsora.utils.checkpoint_choice import last_checkpoint, newest_numbered_checkpoint
    latest = last_checkpoint(work_dir)
    if latest is not None and osp.exists(latest) and osp.realpath(
            osp.dirname(osp.abspath(latest.rstrip('/')))) == osp.realpath(work_dir):
        return latest
    return newest_numbered_checkpoint(work_dir)  # (last_checkpoint names another's)


def checkpoint_dirs(cfg) -> list:
    """Where the run saves its checkpoints: the work dir, and where the checkpoint
    hook has an ``out_dir``, mmengine's ``OUT_DIR/WORK_DIR_NAME`` too."""
    dirs = [cfg.work_dir]
    out_dir = ((cfg.get('default_hooks') or {}).get('checkpoint') or {}).get('out_dir')
    if isinstance(out_dir, str):
        dirs.append(osp.join(out_dir, osp.basename(cfg.work_dir.rstrip(os.sep))))
    return dirs


def check_work_dir_is_new(cfg, args) -> None:
    """Refuse a new run (no ``--resume``: from scratch, or ``--load-from``) into a
    work dir that holds an earlier run's checkpoints (or its checkpoint hook's
    ``out_dir`` does). It started at iteration 0 without a word, overwrote the earlier
    ``iter_N.pth`` and ``last_checkpoint`` as it saved, and ``max_keep_ckpts`` pruned
    the older ones: a forgotten ``--resume`` lost the run. A work dir with logs or a
    dumped config alone (a run stopped before its first checkpoint) is taken. The
    files to remove are named one by one (a glob took other files along, e.g.
    tools/zero_to_state_dict.py's ``iter_N_state_dict.pth``); a ``--load-from`` of a
    checkpoint in that folder is told to use another work dir (removing the
    checkpoints would remove the weights it starts from). Called by :func:`main`,
    not by :func:`build_train_config`, which other code builds configs with."""
    if cfg.get('resume'):
        return
    import re
    import shlex
    for folder in checkpoint_dirs(cfg):
        newest = earlier_checkpoint(folder)
        if newest is not None:
            break
    else:
        return
    folder = folder.rstrip('/') or '/'
    name = osp.basename(newest.rstrip('/'))
    numbered = re.fullmatch(r'(iter|epoch)_(\d+)\.pth', name)
    at = (f', {"iteration" if numbered[1] == "iter" else "epoch"} {numbered[2]}'
          if numbered else '')
    where = (f'--work-dir {cfg.work_dir}' if args.work_dir else f'the work dir {cfg.work_dir}'
             ) + ('' if folder == cfg.work_dir.rstrip('/') else f' (its checkpoints: {folder})')
    earlier = (f'holds the checkpoints of an earlier run (newest: {newest}{at}), which a new '
               'run there would overwrite from iteration 0')
    if args.load_from and osp.realpath(osp.dirname(osp.abspath(
            args.load_from.rstrip('/')))) == osp.realpath(folder):
        raise UserError(f'--load-from {args.load_from} into {where}: it {earlier}, the file '
                        'given among them: start the new run in another --work-dir (or '
                        'continue that run with --resume)')
    # what to remove to start over: the marker and each numbered checkpoint (DeepSpeed's
    # are folders), or a file of another name that the marker names
    saved = sorted((n for n in os.listdir(folder)
                    if re.fullmatch(r'(iter|epoch)_\d+\.pth', n)),
                   key=lambda n: (n.split('_')[0], int(re.sub(r'\D', '', n))))
    files = ['last_checkpoint'] if osp.isfile(osp.join(folder, 'last_checkpoint')) else []
    files += saved + ([] if numbered else [name])
    remove = 'rm -r' if any(osp.isdir(osp.join(folder, n)) for n in saved) else 'rm'
    remove += ''.join(f' {shlex.quote(osp.join(folder, f))}' for f in files)
    start = f'--load-from {args.load_from} into {where}: it' if args.load_from else where
    raise UserError(f'{start} {earlier}: continue that run with --resume, start the new '
                    f'one in another --work-dir, or remove them to start over ({remove})')


def keep_dumped_config(cfg):
    """Keep the config an earlier run dumped into the work dir (``WORK_DIR/
    CONFIG_NAME.py``, which tools/infer.py WORK_DIR reads) across a ``--resume``
    that fails before the checkpoint is resumed (a checkpoint of another layout is
    refused only then): the Runner dumps this run's config when it is built, which
    overwrote the earlier run's. Returns a function to call when the run fails: it
    puts the earlier file back (or removes the one dumped, where there was none)
    unless the checkpoint was resumed; called without a runner (the Runner's
    start-up failed: a full disk cut its dump short), for every run."""
    if not cfg.filename:
        return lambda runner=None: None
    resume = bool(cfg.get('resume'))
    path = osp.join(cfg.work_dir, osp.basename(cfg.filename))  # (Runner.dump_config's)
    try:
        with open(path, 'rb') as f:
            earlier = f.read()
    except OSError:
        earlier = None

    def put_back(runner=None):
        from mmengine.dist import is_main_process
        if not is_main_process() or (runner is not None and (
                not resume or getattr(runner, '_has_loaded', True))):
            return  # a new run's own, or resumed: the config it goes on with is this run's
        try:
            if earlier is None:
                os.remove(path)
            else:
                with open(path, 'wb') as f:
                    f.write(earlier)
        except OSError:
            pass
    return put_back


def resumes_a_complete_run(cfg) -> bool:
    """Whether the run resumes a checkpoint file saved at ``train_cfg.max_iters``
    (:func:`check_resume_matches` says there is nothing to train)."""
    path = cfg.get('load_from')
    if not (cfg.get('resume') and isinstance(path, str) and osp.isfile(path)):
        return False
    meta = load_from_kind(path)[2].get('meta') or {}
    return meta.get('iter') == (cfg.get('train_cfg') or {}).get('max_iters')


def drop_log_dir_left_empty(runner, existed) -> None:
    """Remove the log folder (``WORK_DIR/TIMESTAMP``) of a resume of a complete run
    that wrote nothing but what every start writes (its log and ``vis_data/
    config.py``): each such ``--resume`` left one more folder of start-up output. A
    folder holding what the hooks' ends made (a final evaluation's scalars, samples)
    stays, as does one that was there before (``existed``: the work dir's entries
    before the Runner)."""
    from mmengine.dist import is_main_process
    log_dir = runner.log_dir
    if not is_main_process() or osp.basename(log_dir) in existed:
        return
    made = [osp.relpath(osp.join(folder, f), log_dir)
            for folder, _, files in os.walk(log_dir) for f in files]
    if any(path != osp.join('vis_data', 'config.py') and not (
            path.endswith('.log') and os.sep not in path) for path in made):
        return
    import logging
    import shutil
    for handler in list(runner.logger.handlers):  # (its log file is in the folder)
        if isinstance(handler, logging.FileHandler) and \
                handler.baseFilename.startswith(osp.abspath(log_dir) + os.sep):
            runner.logger.removeHandler(handler)
            handler.close()
    shutil.rmtree(log_dir, ignore_errors=True)


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


def check_resume_matches_strategy(cfg, world_size: int = 1):
    """A DeepSpeed checkpoint folder resumes with --deepspeed at its ZeRO stage, and a
    checkpoint file without it. Across the two mmengine said 'checkpoint file not
    found' of a folder that exists; ZeRO-3 against a ZeRO-1/2 folder (files per rank
    against one) failed in DeepSpeed's loader with a bare AssertionError."""
    if not (cfg.get('load_from') and cfg.get('resume')):
        return
    from mmsora.utils.zero_checkpoint import zero_checkpoint_stage, zero_checkpoint_world_size
    strategy = cfg.get('strategy') or {}
    deepspeed = strategy.get('type') == 'DeepSpeedStrategy'
    saved = zero_checkpoint_stage(cfg.load_from)
    if deepspeed and saved is None:
        raise UserError(f'--resume {cfg.load_from} with --deepspeed: not a DeepSpeed '
                        'checkpoint folder (iter_N.pth/ written by a --deepspeed run)')
    preset = 'deepspeed_zero3' if saved == 3 else 'deepspeed_zero2 (or deepspeed_zero1)'
    if saved is not None and not deepspeed:
        raise UserError(f'--resume {cfg.load_from}: a DeepSpeed checkpoint folder (ZeRO-'
                        f'{saved if saved == 3 else "1/2"}): resume it with --deepspeed '
                        f'{preset}')
    if saved is not None:
        stage = ((strategy.get('config') or {}).get('zero_optimization') or {}).get('stage')
        if (stage == 3) != (saved == 3):
            raise UserError(f'--resume {cfg.load_from}: saved by a ZeRO-'
                            f'{saved if saved == 3 else "1/2"} run, resumed with ZeRO-'
                            f'{stage}: DeepSpeed cannot change that at a resume; give '
                            f'--deepspeed {preset}, or start a new run from its weights '
                            '(tools/zero_to_state_dict.py, then --cfg-options '
                            'model.pretrained_denoiser=FILE)')
        saved_world = zero_checkpoint_world_size(cfg.load_from)
        if saved_world and saved_world != world_size:  # (DeepSpeed's 30-line traceback:
            # 'The checkpoint being loaded used a DP world size of 2 but ...')
            raise UserError(
                f'--resume {cfg.load_from}: saved by {saved_world} DeepSpeed '
                f'process{"es" * (saved_world != 1)}, this run has {world_size}: DeepSpeed '
                'resumes its partitioned optimizer state on the same number only; relaunch '
                'with it, or start a new run from its weights (tools/zero_to_state_dict.py, '
                'then --cfg-options model.pretrained_denoiser=FILE with --deepspeed, or '
                '--load-from FILE without it)')


def check_resume_layout(cfg, world_size: int) -> None:
    """Refuse ``--resume`` of a checkpoint file saved by another layout (processes x
    batch per process x micro-batches per step, its ``meta.run_layout``) before the
    Runner starts. ResumeCheckHook refuses it too, but only once the Runner has
    started: some 250 lines of start-up output and a new log folder per attempt.
    Checked where the config keeps the hook (``default_hooks.resume_check=None``
    turns the check off). Called by :func:`main`, not by :func:`build_train_config`,
    which other code builds configs with (tests of the hook's own refusal)."""
    path = cfg.get('load_from')
    if not (cfg.get('resume') and isinstance(path, str) and osp.isfile(path)):
        return
    if (cfg.get('strategy') or {}).get('type') == 'DeepSpeedStrategy':
        return  # (a file: refused by check_resume_matches_strategy)
    from mmsora.engine.hooks import ResumeCheckHook
    from mmsora.engine.hooks.resume_check_hook import layout_refusal
    from mmsora.engine.strategies import accumulation_of
    from mmsora.utils.training_inputs import hook_class
    hooks = [*(cfg.get('default_hooks') or {}).values(), *(cfg.get('custom_hooks') or [])]
    if not any(h is not None and issubclass(hook_class(h), ResumeCheckHook) for h in hooks):
        return
    saved = (load_from_kind(path)[2].get('meta') or {}).get('run_layout')
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    if not isinstance(saved, dict) or not isinstance(batch, int):
        return  # (an older checkpoint, or a loader's own batch sampler: the hook's)
    now = dict(world_size=world_size, batch_size=batch, accumulation=accumulation_of(cfg))
    refusal = layout_refusal(saved, now, path)  # (the hook's, before its start-up)
    if refusal:
        raise UserError(refusal)


def note_named_layout(config, cfg, world_size: int) -> None:
    """Say when a config named for N processes (``..._8xb32_...``: OpenMMLab's batch
    per process) runs on another number of them without a ``global_batch_size``: the
    global batch, which the recipe's learning rate goes with, is then another (DiT's
    256 became 32 on one card, without a word)."""
    import re
    # (the layout may end the name: t2v_tiny_4xb2.py)
    found = re.search(r'_(\d+)xb(\d+)(_|\.py$|$)', osp.basename(config))
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    if not found or int(found.group(1)) == world_size or not isinstance(batch, int):
        return
    gpus, named_batch = int(found.group(1)), int(found.group(2))
    # (with the run's strategy's accumulation: build_train_config puts it in cfg first)
    from mmsora.engine.strategies import accumulation_of
    recipe, ours = gpus * named_batch, world_size * batch * accumulation_of(cfg)
    if recipe == ours:  # (the batch or accumulation was set to keep it)
        return
    def processes(n):
        return f'{n} process' + ('es' if n != 1 else '')
    fix = ''
    if recipe % world_size == 0:
        fix = f' For the recipe\'s: --cfg-options global_batch_size={recipe}' + (
            f' (with optim_wrapper.accumulative_counts=K where {recipe // world_size} a '
            'process does not fit)' if world_size < gpus else '')
    note(f'{osp.basename(config)} is named for {processes(gpus)} x {named_batch} (a global '
         f'batch of {recipe}); this run has {world_size}: a global batch of {ours} at the '
         f'same learning rate.{fix}')


def build_train_config(args):
    """The config to run, with the command line applied."""
    cfg = load_config(args.config)
    # (on --resume the schedule is the checkpoint's: note_schedule_kept says so)
    apply_cfg_options(cfg, args.cfg_options, schedule_note=args.resume is None)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_output_path(cfg.work_dir, '--work-dir' if args.work_dir else 'work_dir', folder=True)
    from mmsora.engine.strategies.train_options import (accumulation_of, apply_amp,
                                                        fit_amp_to_device)
    if args.amp:
        apply_amp(cfg)
    else:  # a card preset's AmpOptimWrapper without CUDA: what --amp gives there
        fit_amp_to_device(cfg)
    from mmsora.utils.config_keys import check_model_config
    check_model_config(cfg.get('model'))  # (a typo or a wrong value, its key named)
    meta_model = build_model_on_meta(cfg)
    check_vae_folder(meta_model)
    from mmsora.utils.config_keys import check_training_keys
    # Before the presets rewrite the config (DeepSpeed replaces the optimizer wrapper
    # and the EMA hook): a typo would fail after the Runner's start-up output, or
    # later. It reads no file, so it comes before the checks of --resume's checkpoint.
    # (The model was checked above, its types too.)
    check_training_keys(cfg, check_model=False)
    note_missing_hooks(cfg)
    accumulation_of(cfg)  # a whole number >= 1 (mmengine asserts after its start-up)
    if args.resume is not None and args.load_from is not None:
        raise UserError('--resume and --load-from exclude each other: --resume '
                        'continues a run (optimizer, EMA, iteration), --load-from '
                        'starts a new one from given weights')
    config_load_from = cfg.get('load_from')  # (a config's own: --resume may replace it)
    if args.resume == 'auto':
        latest = latest_checkpoint(cfg.work_dir)
        # nothing saved yet (a requeued job's first start, or another --work-dir than
        # meant): said in one line, instead of mmengine's 'resumed from ... None'
        cfg.resume, cfg.load_from = latest is not None, latest
        if latest is None and is_launch_rank0():
            print(f'--resume: no checkpoint in {cfg.work_dir} yet: the run starts at '
                  'iteration 0', flush=True)
    elif args.resume is not None:
        from mmsora.engine.strategies import is_zero_checkpoint
        if is_zero_checkpoint(args.resume):  # a DeepSpeed checkpoint folder
            cfg.resume, cfg.load_from = True, args.resume
        elif osp.isdir(args.resume):
            raise UserError(f'--resume {args.resume}: a folder, not a checkpoint file (to '
                            'continue the run in a work dir: --work-dir DIR --resume)')
        elif not osp.isfile(args.resume):
            raise UserError(f'--resume checkpoint not found: {args.resume}')
        else:
            check_checkpoint_complete(args.resume)
            cfg.resume, cfg.load_from = True, args.resume
    # (a file: not a DeepSpeed folder; with --deepspeed a file is refused below, naming
    # the way)
    if (cfg.get('resume') and isinstance(cfg.get('load_from'), str)
            and osp.isfile(cfg.load_from) and not args.deepspeed):
        check_resume_matches(cfg, meta_model, cfg.load_from,
                             '--resume' if args.resume is not None else 'resume = True, load_from')
    option = '--load-from'
    if args.load_from is None and not cfg.get('resume') and isinstance(config_load_from, str):
        # a config's load_from (OpenMMLab's way, or --cfg-options load_from=F) goes the
        # way --load-from goes: a DiT file reached mmengine's loader and its EMA hook
        # failed with a KeyError traceback; under --resume with nothing saved yet (a
        # requeued job's first start) the run starts from it (it was dropped)
        args.load_from, option = config_load_from, 'load_from'
    training_file = None  # a DiT / fast-DiT / SiT train.py's file given to --load-from
    run_checkpoint = None  # a run's checkpoint given to --load-from (said once checked)
    if args.load_from is not None:
        from mmsora.utils.checkpoint_choice import resolve_checkpoint
        from mmsora.utils.diffusers_dit import diffusers_dit_folder
        from mmsora.utils.zero_checkpoint import is_zero_checkpoint
        try:  # a work dir: its newest checkpoint, as infer and export_denoiser take it
            found = resolve_checkpoint(args.load_from)
        except FileNotFoundError as e:
            raise UserError(f'{option} {e}') from None
        if found != args.load_from:
            if is_launch_rank0():
                print(f'{option} {args.load_from}: its newest checkpoint, {found}', flush=True)
            args.load_from = found
        if is_zero_checkpoint(found):
            raise UserError(f'{option} {found}: a DeepSpeed checkpoint folder: convert it '
                            'with tools/zero_to_state_dict.py and start from the file it '
                            'writes (--load-from, or model.pretrained_denoiser with '
                            '--deepspeed), or continue that run: --resume it with '
                            '--deepspeed')
        if not osp.isfile(found) and diffusers_dit_folder(found) is None:
            raise UserError(f'{option} checkpoint not found: {found}')
        cfg.resume = False
        kind, state_dict, checkpoint = load_from_kind(args.load_from)
        from mmsora.utils.trained_settings import (checkpoint_objective, objective_differences,
                                                   objective_settings, said_objective_differences)
        # (an mmengine run's config, or a SiT training file's args)
        trained, settings = checkpoint_objective(checkpoint), objective_settings(cfg.model)
        theirs, ours = (x and x['type'] for x in (trained, settings))
        dit_time = ((cfg.model.get('diffusion') or {}).get('timestep_convention') == 'dit'
                    and theirs == 'GaussianDiffusion')  # (docs/sit.md's recipe: meant)
        if theirs and ours and theirs != ours and not dit_time:  # a fine-tune across
            # objectives (DiT into SiT, docs/sit.md) may be meant: said, not refused
            note(f'--load-from {args.load_from}: trained with the {theirs} objective, this '
                 f'run trains {ours} from its weights (docs/sit.md: timestep_convention)')
        differ = objective_differences(trained, settings)
        if differ:  # (a SiT noise-prediction file trained on as velocity without a word)
            was, now, options = said_objective_differences(differ)
            note(f'--load-from {args.load_from}: trained with {was}, this run trains with '
                 f'{now} from its weights (a fine-tune to another parametrisation; to train '
                 f'on as it was: --cfg-options {options})')
        video = cfg.model.get('denoiser', {}).get('type') == 'VideoDiT'
        if kind == 'run' or (kind == 'image_run' and not video):
            if not args.deepspeed and meta_model is not None:  # (with --deepspeed a
                # file is refused below, naming the way)
                check_load_from_matches(meta_model, args.load_from, state_dict)
            cfg.load_from = args.load_from
            run_checkpoint = checkpoint
        else:
            # An original DiT / fast-DiT file, or an image run's checkpoint for a video
            # model: the denoiser loads it strictly (VideoDiT inflates it exactly), not
            # mmengine's non-strict loader, which would skip mismatched keys silently.
            if kind == 'denoiser' and not video and meta_model is not None:
                check_denoiser_file_matches(meta_model, args.load_from, checkpoint)
            elif video and meta_model is not None:
                check_inflation_matches(meta_model, args.load_from, kind, checkpoint)
            cfg.load_from = None
            cfg.model.pretrained_denoiser = args.load_from
            if 'pretrained_entry' in cfg.model:  # (a work dir's dumped config keeps the
                # entry its run took from its own file)
                cfg.model.pretrained_entry = 'auto'
            if kind == 'denoiser' and 'ema' in checkpoint and 'model' in checkpoint:
                training_file = checkpoint  # (its entries: once the hooks are known)
    if cfg.get('load_from') and cfg.model.get('pretrained_denoiser'):
        # the run's checkpoint gives every weight (--resume, or --load-from a run): a
        # pretrained_denoiser (a work dir's dumped config keeps its run's --load-from)
        # was read for nothing, and stopped the resume once that file was gone
        cfg.model.pretrained_denoiser = None
    seed = (cfg.get('randomness') or {}).get('seed')
    if seed is not None and 'init_seed' not in cfg.model:
        # The initial weights from the run's seed, wherever the runner builds the model
        # and on every process alike (FSDP / DeepSpeed start from one whole model).
        cfg.model.init_seed = seed
    from mmsora.engine.strategies import (apply_global_batch, apply_speed_options,
                                          apply_strategy, check_accumulation,
                                          drop_disabled_hooks, fit_loader_workers,
                                          launcher_world_size)
    from mmsora.engine.strategies.train_options import (accumulation_setting,
                                                        set_run_strategy)
    # The run's strategy (the --deepspeed / --fsdp preset with its strategy.KEY=VALUE
    # options, or the config's own), chosen once and put in cfg.strategy first, where
    # every reader of the accumulation finds it: the global batch split, the named
    # layout's note and the accumulation checks (a preset's own
    # gradient_accumulation_steps=4 was left out of the split, and each optimizer step
    # saw 4 global batches); apply_strategy fills in its 'auto' values last.
    set_run_strategy(cfg, args.deepspeed, args.fsdp, args.cfg_options)
    # A config's global_batch_size fixes the batch across process counts (before
    # DeepSpeed's presets read the per-process batch).
    world_size = launcher_world_size(args.launcher)
    per_process = apply_global_batch(cfg, world_size)
    if per_process is not None and is_launch_rank0():
        accumulation, setting = accumulation_setting(cfg)  # (what the split divided by)
        print(f'global_batch_size={cfg.global_batch_size}: train_dataloader.batch_size='
              f'{per_process} on each of {world_size} process(es)'
              + (f' x {accumulation} accumulation steps ({setting})'
                 if accumulation > 1 else ''), flush=True)
    elif per_process is None:
        note_named_layout(args.config, cfg, world_size)
    note_video_dataset_fps(cfg)
    apply_speed_options(cfg, compile=args.compile)
    # e.g. no checkpoint inside an accumulated step; before the strategy's 'auto'
    # values are filled in, so that its lines name the setting the user gave
    check_accumulation(cfg)
    apply_strategy(cfg)  # (the strategy set_run_strategy put in the config)
    drop_disabled_hooks(cfg)  # default_hooks.loss_guard=None: off
    if training_file is not None:  # (which EMA hook the strategy left decides)
        start_from_training_file(cfg, args.load_from, training_file)
    fit_loader_workers(cfg)  # num_workers=0 with persistent_workers: torch refuses
    if isinstance(cfg.get('train_dataloader'), dict):  # mmengine's default, pseudo_collate,
        # leaves the batch a list (an AttributeError in the model): ours stack it
        if not cfg.train_dataloader.get('collate_fn'):
            cfg.train_dataloader.collate_fn = dict(type='default_collate')
    check_latent_store(cfg)  # latents scaled for another VAE, labels past num_classes
    check_resume_matches_strategy(cfg, world_size)
    if ((cfg.get('strategy') or {}).get('type') == 'DeepSpeedStrategy'
            and cfg.get('load_from') and not cfg.get('resume')):
        # mmengine's DeepSpeedStrategy reads every checkpoint with DeepSpeed's folder
        # loader (an AssertionError for a file)
        raise UserError(f'--load-from {cfg.load_from} with --deepspeed: mmengine loads '
                        'only DeepSpeed checkpoint folders there; start from these '
                        f'weights with --cfg-options model.pretrained_denoiser='
                        f'{cfg.load_from} instead')
    if run_checkpoint is not None:  # (not before a refusal: it said the run would start)
        note_load_from_run(args, run_checkpoint)
    if (cfg.get('resume') and isinstance(cfg.get('load_from'), str)
            and osp.isfile(cfg.load_from) and not args.deepspeed):
        # (on the final config: the one the Runner dumps, as the checkpoint's run did)
        note_resumed_config_changes(
            cfg, cfg.load_from, load_from_kind(cfg.load_from)[2],
            '--resume' if args.resume is not None else 'resume = True, load_from')
    if not torch.cuda.is_available():
        cfg.env_cfg = cfg.get('env_cfg') or {}  # (mmengine's default: none given)
        cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if (cfg.get(key) or {}).get('pin_memory'):  # a GPU recipe: nothing to pin
                cfg[key]['pin_memory'] = False  # for, and torch warns about it
        if args.launcher != 'none':
            # mmengine gives DDP device_ids=[LOCAL_RANK] even for CPU modules, which
            # DDP rejects; CPU DDP needs device_ids=None.
            wrapper = cfg.get('model_wrapper_cfg') or dict(
                type='MMDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
            wrapper['device_ids'] = None
            cfg.model_wrapper_cfg = wrapper
    return cfg


# What a write meets on a full disk, over a quota, on a file system mounted read-only, or
# at the file-size limit (EFBIG: ulimit -f, or the file system's largest file): no room,
# at the run's start-up as during its training (graceful_stop.no_room_fix: what to do).
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def collective_timeout(cfg) -> dict:
    """``timeout_s`` for init_cpu_distributed: the config's env_cfg.dist_cfg.timeout
    (seconds), which mmengine gives NCCL; a gloo run (no CUDA) waited a fixed 30
    minutes whatever it said. Nothing when the config sets none."""
    timeout = ((cfg.get('env_cfg') or {}).get('dist_cfg') or {}).get('timeout')
    if timeout is None:
        return {}
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise UserError(f'env_cfg.dist_cfg.timeout must be a number of seconds > 0, got '
                        f'{timeout!r}')
    return dict(timeout_s=timeout)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    from mmsora.engine import CheckpointWriteError, init_cpu_distributed
    from mmsora.engine.graceful_stop import (interrupted_at, no_room_fix, stop_gracefully,
                                             stopped_by_error, stopped_by_full_disk)
    from mmsora.engine.log_files import guarded_log_files
    # (a mistake here is said by the first process of each machine: run_cli)
    # each of torchrun's processes trained the whole run alone, into the same work dir
    check_torchrun_launcher(args.launcher)
    with start_up_reads():  # (each checkpoint read once by the checks below)
        cfg = build_train_config(args)
        check_stores_exist(cfg)
        check_work_dir_is_new(cfg, args)  # a forgotten --resume
        from mmsora.engine.strategies import launcher_world_size
        check_resume_layout(cfg, launcher_world_size(args.launcher))
        complete = resumes_a_complete_run(cfg)
    timeout = collective_timeout(cfg)
    # mmengine's launcher calls torch.cuda.set_device even without CUDA: start
    # gloo ourselves there, and mmengine then leaves the process group alone.
    init_cpu_distributed(args.launcher, **timeout)
    from mmsora.engine.strategies import (prepare_deepspeed, seed_model_at_run_time,
                                          set_tf32, single_process_env, tf32_supported)
    set_tf32(tf32_supported() and not args.no_tf32)
    malloc_kept = keep_freed_memory_on_cpu(args, not torch.cuda.is_available())
    if prepare_deepspeed(cfg):  # installed; mmengine mended
        for key, value in single_process_env(cfg).items():  # one-process run
            os.environ.setdefault(key, value)
    put_back_config = keep_dumped_config(cfg)  # (the Runner dumps its own)
    existed = set(os.listdir(cfg.work_dir)) if osp.isdir(cfg.work_dir) else set()
    try:  # (a log file on a full disk: one line, not a traceback per record: log_files.py)
        with guarded_log_files():
            if cfg.get('runner_type') == 'FlexibleRunner':  # --deepspeed / --fsdp
                from mmengine.runner import FlexibleRunner
                runner = FlexibleRunner.from_cfg(cfg)
                seed_model_at_run_time(runner)  # it builds the model later, on every process
            else:
                runner = Runner.from_cfg(cfg)
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        # (a 190-line traceback from the config's dump, and a 0-byte dumped config
        # that tools/infer.py WORK_DIR then read)
        put_back_config()
        # (EFBIG: another --work-dir has the same file-size limit; with none set, the
        # fix is a --work-dir on another file system already)
        fix = no_room_fix(e.errno)
        raise RunError(f'{e.filename or cfg.work_dir}: {e.strerror}, at the run\'s start-up '
                       f'(its config and logs go to {cfg.work_dir}): {fix}'
                       + ('' if e.errno == errno.EFBIG else ', or give another --work-dir')
                       ) from None
    if malloc_kept:
        runner.logger.info('No GPU: glibc malloc keeps freed memory for the next step '
                           '(--default-malloc leaves it as it is)')
    # Ctrl-C (one process) and SIGTERM (a scheduler's time limit or preemption) stop
    # after the iteration under way, with a checkpoint to resume from
    restore = stop_gracefully(runner, ctrl_c=args.launcher == 'none')
    try:
        with guarded_log_files():  # (a scalars file's failed write names the file)
            runner.train()
    except Interrupted:
        raise
    except KeyboardInterrupt:  # Ctrl-C: one line saying where to continue from
        loop = getattr(runner, '_train_loop', None)  # (runner.iter would build it)
        raise Interrupted(interrupted_at(runner, getattr(loop, 'iter', 0))) from None
    except Exception as e:  # a crash (another process killed, out of memory, a bad
        # file): its traceback ends with where the run stands, as Ctrl-C's line does
        # a full disk (mmengine's scalars files, written every logged iteration; a
        # checkpoint's save): one line, the file, what to do; EFBIG (a file-size limit)
        # is no room either, with its own advice
        failed = e.error if isinstance(e, CheckpointWriteError) else e
        if isinstance(failed, OSError) and failed.errno in FULL_DISK:
            raise RunError(stopped_by_full_disk(runner, e)) from e
        where = stopped_by_error(runner)
        if where:
            add_note(e, where)
        raise
    finally:
        restore()
        if getattr(sys.exc_info()[1], 'exit_code', None) == 143:  # stopped by SIGTERM:
            # the process is to end; a SIGTERM more (a launcher's, passed on) must not
            # stop it before it has said where the run stands (first: run_cli's handler,
            # put back by restore, would break off putting back the config)
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sys.exc_info()[1] is not None:  # stopped: one that had not resumed yet
            put_back_config(runner)  # leaves the earlier run's dumped config
    if complete:  # nothing trained: no log folder of start-up output alone
        drop_log_dir_left_empty(runner, existed)
    from mmsora.utils.dist import close_process_group, release_engine
    release_engine(runner)
    del runner
    close_process_group()


if __name__ == '__main__':
    sys.exit(run_cli(main))
