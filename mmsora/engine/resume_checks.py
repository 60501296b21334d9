"""``--resume`` (or a config's ``resume = True``) checked before the Runner.

What tools/train.py checks of the checkpoint a run resumes: a run like the config's
(its model, objective and iteration), the DeepSpeed stage and process count of a
checkpoint folder, the layout of a checkpoint file; and what it says a resume keeps
from the checkpoint (learning rate, schedule) or takes from the config since changed.
"""
import math
import os.path as osp

from mmsora.engine.load_from_checks import check_load_from_matches, load_from_kind
from mmsora.utils.cli import UserError, is_launch_rank0, note
from mmsora.utils.trained_settings import config_objective, trained_config, trained_objective

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
# since the checkpoint's run changes the training from the resume on. optim_wrapper's
# type and dtype are its precision (--amp, --no-amp, a card preset's AmpOptimWrapper:
# switched without a word); its learning rate and param_scheduler:
# note_learning_rate_kept / note_schedule_kept.
_RESUME_COMPARED = ('custom_hooks', 'sample_cfg', 'model.diffusion', 'optim_wrapper.type',
                    'optim_wrapper.dtype')


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


def resumes_a_complete_run(cfg) -> bool:
    """Whether the run resumes a checkpoint file saved at ``train_cfg.max_iters``
    (:func:`check_resume_matches` says there is nothing to train)."""
    path = cfg.get('load_from')
    if not (cfg.get('resume') and isinstance(path, str) and osp.isfile(path)):
        return False
    meta = load_from_kind(path)[2].get('meta') or {}
    return meta.get('iter') == (cfg.get('train_cfg') or {}).get('max_iters')


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
    turns the check off). Called by tools/train.py's ``main``, not by its
    ``build_train_config``, which other code builds configs with (tests of the hook's
    own refusal)."""
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
