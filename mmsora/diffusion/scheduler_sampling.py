"""Sampling loops shared by the objectives: a diffusers scheduler's loop, NFE counting.

The loop follows diffusers' pipelines (``set_timesteps``, ``scale_model_input``,
``step``); what the model's output means is the objective's business, so each
objective passes a function that turns ``(x, t)`` into the scheduler's
``model_output`` (epsilon for :class:`GaussianDiffusion`, the flow velocity
noise - data for :class:`Transport`). An objective whose model predicts x0 turns it
into epsilon with :func:`epsilon_from_x0`, at the noise level the scheduler's ``step``
reads the same input at.
"""
import functools
import inspect
import numbers
import re
import types
import typing
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mmsora.utils.trained_settings import keyword_defaults

__all__ = ['CountingModel', 'scheduler_sample_loop', 'check_sampler_options',
           'check_sampler_name', 'check_num_steps', 'check_sample_settings', 'merge_sample_cfg',
           'check_sample_cfg_dict',
           'check_scheduler_options', 'scheduler_option_values', 'is_bool', 'whole_number',
           'scheduler_noise_level', 'epsilon_from_x0', 'SamplerStepError']


class CountingModel:
    """Wraps a model function and counts its calls (the NFE a sampler reports).

    A classifier-free-guided call (both halves in one batch) counts once.
    """

    def __init__(self, model_fn: Callable):
        self.model_fn = model_fn
        self.nfe = 0

    def __call__(self, *args, **kwargs):
        self.nfe += 1
        return self.model_fn(*args, **kwargs)


# LatentDiffusion.sample's own settings: a name close to one of them is a typo of it
# (sample_cfg.num_step), not an option of the sampler.
SAMPLE_SETTINGS = ('sampler', 'num_steps', 'cfg_scale', 'guidance_channels', 'precision',
                   'seeds')
# Entries of a config's sample_cfg that are not arguments of LatentDiffusion.sample
# (the tools read them): close names are typos of them too (sample_cfg.fsp).
NOT_SAMPLE_ARGS = ('fps',)
# What the tools use them for (check_sampler_options' message).
_NOT_SAMPLE_ARGS_USE = {'fps': 'the frame rate of saved videos'}
# LatentDiffusion.sample's arguments that the tools, the hooks, sample_images and
# mass_sample pass themselves, not sampling settings: a sample_cfg.progress or seeds
# met the same keyword twice (a TypeError).
CALLER_PASSED = ('labels', 'seeds', 'noise', 'progress', 'prompts', 'text_embeds',
                 'text_mask', 'pooled_text_embeds')


def sample_settings_of(sample: Callable) -> list:
    """The settings a ``sample`` method takes by name (``LatentDiffusion.sample``, bound
    or not, or a subclass's): its named arguments but ``self`` and
    :data:`CALLER_PASSED`; the rest of a ``sample_cfg`` are the sampler's options."""
    return [name for name, p in inspect.signature(sample).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and name != 'self' and name not in CALLER_PASSED]


def check_not_caller_passed(settings: dict) -> None:
    """Refuse, in one line, a :data:`CALLER_PASSED` key among sampling settings (a
    ``sample_cfg`` or sampling keywords)."""
    passed = [key for key in CALLER_PASSED if key in settings]
    if passed:
        raise ValueError(f'{", ".join(passed)}: not a sampling setting (the tools, the '
                         'hooks, sample_images and mass_sample pass it themselves: their '
                         'seed(s), labels, prompts, progress); leave it out of sample_cfg '
                         'and the sampling keywords')


def merge_sample_cfg(base: Optional[dict], *overs: Optional[dict], names: Sequence[str] = (),
                     **chosen) -> dict:
    """A config's ``sample_cfg`` (``base``) under overrides: dicts (a hook's or the
    evaluation's ``sample_cfg``, a tool's sampler options), then keyword choices
    (a tool's options; None ones are not chosen). Where an override picks another
    sampler than the settings so far, their options of the sampler they had are
    dropped (a config's DDIM ``eta`` would be refused by DDPM), the sampling settings
    and the tools' entries (``fps``) kept. The one rule of tools/infer.py, tools/test.py,
    the sampling hooks, the text-to-video pictures and tools/benchmark_sampling.py
    (each had its own: a hook or evaluation choosing another sampler kept the
    config's options and was refused, the pictures dropped eta and the rest).

    ``names``: the config keys ``base`` and each of ``overs`` came from, in order
    (``'custom_hooks[0].sample_cfg'``), for the message refusing one that is not a
    dict (:func:`check_sample_cfg_dict`; unnamed: ``base`` is ``sample_cfg``)."""
    names = (*names, *[None] * (2 + len(overs) - len(names)))  # (chosen: a dict of ours)
    merged = dict(check_sample_cfg_dict(base, names[0] or 'sample_cfg'))
    for over, name in zip((*overs, {k: v for k, v in chosen.items() if v is not None}),
                          names[1:]):
        over = dict(check_sample_cfg_dict(over, name))
        if over.get('sampler') not in (None, merged.get('sampler')):
            merged = {k: v for k, v in merged.items()
                      if k in SAMPLE_SETTINGS or k in NOT_SAMPLE_ARGS}
        merged.update(over)
    return merged


def check_sample_cfg_dict(value, name: Optional[str] = 'sample_cfg') -> Mapping:
    """``value`` (a ``sample_cfg``, or sampling settings over one), or {} for None;
    a one-line ValueError for anything but a dict, naming ``name`` (the config key it
    came from; None: settings over the config's ``sample_cfg``, from Python):
    ``--cfg-options sample_cfg=ddim`` was refused as "dictionary update sequence
    element #0 has length 1; 2 is required", a number as "'int' object is not
    iterable"."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    given = value
    if isinstance(value, str):  # (--cfg-options gives a dict as its text)
        import ast
        try:
            given = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(given, Mapping) and given:
        entries = dict(given)
    elif isinstance(value, str) and re.fullmatch(r'[A-Za-z][\w.+-]*', value):
        entries = {'sampler': value}  # (a sampler's name: the one setting a word is)
    else:
        entries = None
    example = "dict(sampler='ddim', num_steps=50, ...)"
    if name is None:  # (from Python: a keyword of evaluate, a hook's argument)
        fix = (f': give dict({", ".join(f"{k}={v!r}" for k, v in entries.items())})'
               if entries else '')
        raise ValueError(f"sampling settings over the config's sample_cfg must be a dict "
                         f'({example}), got {value!r}{fix}')
    key = re.sub(r'\[(\d+)\]', r'.\1', name)  # (custom_hooks[0] as --cfg-options says it)
    fix = (' '.join(f'{key}.{k}={v}' for k, v in entries.items()) if entries
           else f'{key}.NAME=VALUE for each setting')
    raise ValueError(f'{name} must be a dict of sampling settings ({name}={example}), got '
                     f'{value!r}: give its entries by name, as --cfg-options {fix}')


# Well-known spellings of samplers in diffusers' algorithm names, k-diffusion's
# functions (sample_dpmpp_2m), A1111's menu ('DPM++ 2M', 'Euler a') and SiT's flags,
# as _sampler_key writes them, with the key of the sampler they mean: for the hint of
# check_sampler_name alone (they are not accepted as names).
_SAMPLER_ALIASES = {
    'dpmsolverpp': 'dpmsolver', 'dpmpp': 'dpmsolver', 'dpmpp2m': 'dpmsolver',
    'dpmsolver2m': 'dpmsolver',
    'eulera': 'eulerancestral',
    'dopri5': 'odedopri5', 'flowmatch': 'flowmatcheuler',
}


def _sampler_key(name) -> str:
    """A sampler's name reduced to what tells it apart: lower case, '++' as 'pp', no
    separators, no k-diffusion prefix (``k_``, ``sample_``) nor diffusers' suffixes
    ('Scheduler', 'Multistep', 'Discrete'): 'dpm-solver' and
    'DPMSolverMultistepScheduler' are both 'dpmsolver', 'DDIM' and 'DDIMScheduler'
    both 'ddim'."""
    key = re.sub(r'^(k|sample)[-_ ]', '', str(name).lower().replace('++', 'pp'))
    key = re.sub(r'[^a-z0-9]', '', key)
    for suffix in ('scheduler', 'discrete', 'multistep'):
        key = key[:-len(suffix)] if key.endswith(suffix) and key != suffix else key
    return _SAMPLER_ALIASES.get(key, key)


def check_sampler_name(sampler: str, samplers: Sequence[str], owner: str):
    """Raise a one-line ValueError for a sampler ``owner`` does not have, with the
    names it means first, those of the same :func:`_sampler_key` ('dpm-solver', 'dpm++'
    -> DPMSolverMultistepScheduler; 'DDIM' -> ddim, DDIMScheduler), then the names close
    to it ('dpm' -> ddpm, DDPMScheduler, DPMSolverMultistepScheduler), three at most."""
    if sampler in samplers:
        return
    import difflib
    key = _sampler_key(sampler)
    meant = [name for name in samplers if key and _sampler_key(name) == key]
    lower = {name.lower(): name for name in samplers}
    key = str(sampler).lower()
    close = [lower[n] for n in difflib.get_close_matches(key, list(lower), n=3)]
    close += [name for low, name in lower.items() if key and key in low]
    close = list(dict.fromkeys([*meant, *close]))  # (the names it means first)
    hint = f'; did you mean {", ".join(close[:3])}?' if close else ''
    raise ValueError(f'unknown sampler {sampler!r} for {owner}; choose one of '
                     f'{list(samplers)}{hint}')


def check_sampler_options(sampler: str, options: dict, accepted: Sequence[str],
                          listed: Optional[Sequence[str]] = None):
    """Raise a one-line ValueError naming options that ``sampler`` does not take.

    A name close to an option or a setting is hinted as its typo; a setting or a
    tools' entry (``NOT_SAMPLE_ARGS``: a run's whole ``sample_cfg`` handed to the
    sampler) is said to be one, never hinted as the fix of itself. ``listed``: the
    options the message offers and hints (None: ``accepted``), where some of
    ``accepted`` are names the caller refuses itself, with their reason."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        import difflib

        from mmsora.utils.foreign_flags import FOREIGN_KEYS
        accepted = accepted if listed is None else listed
        takes = ', '.join(sorted(accepted)) if accepted else 'none'
        notes = []
        for key in unknown:
            if key in NOT_SAMPLE_ARGS:
                notes.append(f'{key} is not for the sampler: the tools read it from '
                             f'sample_cfg ({_NOT_SAMPLE_ARGS_USE.get(key, "not sampling")}); '
                             'leave it out of the sampling arguments')
            elif key in SAMPLE_SETTINGS:
                notes.append(f'{key} is a setting of LatentDiffusion.sample, not an option '
                             'of the sampler')
            elif key == 'sampler_options':  # (a nested dict, named after infer's flag)
                notes.append(_nested_options_note(options[key]))
            elif key in FOREIGN_KEYS:  # (diffusers' name: not 'guidance_channels?')
                notes.append(f'did you mean {FOREIGN_KEYS[key]}' +
                             (f' for {key}' if len(unknown) > 1 else '') + '?')
            else:
                close = difflib.get_close_matches(
                    key, [n for n in (*SAMPLE_SETTINGS, *NOT_SAMPLE_ARGS, *accepted)
                          if n != key], n=1)
                if close:
                    notes.append(f'did you mean {close[0]}' +
                                 (f' for {key}' if len(unknown) > 1 else '') + '?')
        hint = ''.join(f'; {note}' for note in notes)
        raise ValueError(f'sampler {sampler!r} takes no option {", ".join(unknown)} '
                         f'(its options: {takes}; the sampling settings: '
                         f'{", ".join(SAMPLE_SETTINGS[:-1])}){hint}')


def _nested_options_note(nested) -> str:
    """The hint for a ``sampler_options`` entry (sample_cfg.sampler_options=...,
    ``sample(sampler_options=...)``): a sampler's options sit flat beside ``sampler``,
    as tools/infer.py's --sampler-options puts them (it was hinted as a typo of
    ``sampler``, which is not the fix). Its entries, where they can be read (--cfg-options
    gives a dict as its text), are shown flat, in a config's form and as keywords of
    ``sample_images`` / ``model.sample`` (the note cannot tell which caller it has)."""
    if isinstance(nested, str):
        import ast
        try:
            nested = ast.literal_eval(nested)
        except (ValueError, SyntaxError):
            pass
    readable = isinstance(nested, dict) and nested
    flat = (' '.join(f'sample_cfg.{k}={v}' for k, v in nested.items()) if readable
            else 'sample_cfg.NAME=VALUE')
    keywords = (', '.join(f'{k}={v!r}' for k, v in nested.items()) if readable
                else 'NAME=VALUE')  # (sample_images / model.sample from Python)
    return ('sampler_options is not a key: a sampler\'s options go flat in sample_cfg, '
            f'beside sampler ({flat}; from Python, keywords: {keywords})')


def check_scheduler_options(sampler: str, options: dict, fixed: Sequence[str],
                            objective: str, build: Callable, num_steps: int):
    """Raise a one-line ValueError for options a diffusers scheduler sampler does not
    take or refuses. Its options are its constructor's settings (what diffusers'
    ``Scheduler.from_config(config, **kwargs)`` takes: ``solver_order``,
    ``timestep_spacing``, ...), but ``fixed``: those the objective sets to the process
    it trained (its betas, timesteps, prediction), refused as such. In this order: the
    fixed ones, the names (:func:`check_sampler_options`), the kinds of the values
    (:func:`_check_option_kinds`), the dynamic shift's settings (they act only with a
    ``mu`` the loop does not pass), whole numbers outside their bounds (below their least
    value, a solver's order above its highest: :func:`_check_least_whole_values`), then
    the values as the scheduler judges them: it is built with them
    (``build(**options)``) and given its ``num_steps`` timesteps and one step, as
    sampling will (cheap, so tools/infer.py says a refused value before the weights
    load), and what it raises becomes one line naming the options it is
    refused for (:func:`_minimal_culprits`); an option that makes ``set_timesteps`` ask
    for an argument the loop does not pass (``use_dynamic_shifting``: ``mu``, which
    diffusers' pipelines compute from the picture) is said so, in words of ours.
    ``objective``: the trained process in words, for the message."""
    from .schedulers import scheduler_settings
    settings = scheduler_settings(sampler)
    _refuse_fixed(sampler, options, fixed, settings, objective)
    accepted = [name for name in settings if name not in fixed]
    # (the dynamic shift and its settings are names it has, refused below with their
    # reason, use_dynamic_shifting=False its default: not offered as its options)
    check_sampler_options(sampler, options, accepted,
                          [name for name in accepted if name not in
                           ('use_dynamic_shifting', *_DYNAMIC_SHIFT_SETTINGS)])
    _check_option_kinds(sampler, options, settings)
    _refuse_dynamic_shift_settings(sampler, options, settings, fixed)
    _check_least_whole_values(sampler, options, settings)
    options = scheduler_option_values(options)
    refusal = _trial_run(build, options, num_steps)
    if refusal.why is not None:
        culprits = _minimal_culprits(options, refusal,
                                     lambda chosen: _trial_run(build, chosen, num_steps))
        raise ValueError(_refusal_message(sampler, num_steps, culprits, refusal,
                                          _shift_hint(options, settings, fixed)))


def _refuse_fixed(sampler: str, options: dict, fixed: Sequence[str], settings: dict,
                  objective: str):
    """Refuse the settings the objective fixes (``fixed``) that ``options`` give.
    (A fixed name the scheduler has not, DDIM's use_dynamic_shifting, is left to
    :func:`check_sampler_options`: an unknown option.)"""
    given = [key for key in options if key in fixed and key in settings]
    if given:
        raise ValueError(f'sampler {sampler!r} takes {", ".join(given)} from the model\'s '
                         f'objective ({objective}): another value would sample another '
                         f'process than the one trained; leave '
                         f'{"it" if len(given) == 1 else "them"} out of the sampler options')


def _check_option_kinds(sampler: str, options: dict, settings: dict):
    """Refuse a value of the wrong kind for its setting (:func:`_setting_kind`): a word
    for a switch (diffusers took 'false' as true), True or False for a number or a word
    (True as 1), a word outside the list its annotation gives (its ``Literal``: DDPM's
    variance_type), a fraction for a whole number (refused in numpy's or Python's words:
    "Cannot cast ufunc 'add' output ..."); numpy's bools are bools; numpy's integers
    and 0-d integer tensors whole numbers (:func:`whole_number`)."""
    from mmsora.registry import NOISE_SCHEDULERS
    hints = _type_hints(NOISE_SCHEDULERS.get(sampler))
    for key, value in options.items():
        kind, choices = _setting_kind(hints.get(key), settings[key])
        default = settings[key]
        if kind == 'whole':  # (a word or a bool too: said to be no whole number, not 'a
            # number', which '2' reads as)
            if whole_number(value) is None and not (value is None and default is None):
                raise ValueError(f'{key}={value!r} is not a whole number (a setting of '
                                 f'{sampler}; its default: {default}): give a whole number')
            continue
        # (--sampler-options use_karras_sigmas=false: a word, which diffusers takes as true)
        if kind == 'switch' and not is_bool(value):
            raise ValueError(f'{key}={value!r} is not True or False (a switch of {sampler}; '
                             f'its default: {default})')
        # True or False for a switch alone (solver_order=True: diffusers takes it as 1;
        # shift_terminal=True as 1, DPM-Solver's variance_type=True as unset)
        # (None: unset, where that is the default; a word: Python's words, "can't
        # multiply sequence by non-int of type 'str'")
        if kind == 'number' and (is_bool(value) or not (
                isinstance(value, numbers.Real) or (value is None and default is None))):
            raise ValueError(f'{key}={value!r} is not a number (a setting of {sampler}; '
                             f'its default: {default}): give a number')
        # a word outside its annotation's list, too (DDPM's variance_type='x' sampled as
        # 'fixed_small', DPM-Solver's algorithm_type='deis' with sigma_min as 'dpmsolver++',
        # without a word; None where it is not the default: diffusers' own default, unsaid)
        if kind == 'word' and (is_bool(value) or choices and not (
                isinstance(value, str) and value in choices or
                value is None and default is None)):
            words = ', '.join(map(repr, choices)) if choices else 'a word'
            raise ValueError(f'{key}={value!r} is not {"one of " if choices else ""}{words} '
                             f'(a setting of {sampler}; its default: {default!r}): '
                             f'give {"one of them" if choices else "a word"}'
                             f'{_close_word(value, choices)}')


def _close_word(value, choices: Sequence[str]) -> str:
    """'; did you mean ...?' with the choice a word ``value`` is likely meant for (the
    same word in other case, else a close spelling: 'trailng'), or ''."""
    if not isinstance(value, str) or not choices:
        return ''
    import difflib
    lower = {choice.lower(): choice for choice in choices}
    close = [value.lower()] if value.lower() in lower else \
        difflib.get_close_matches(value.lower(), list(lower), n=1)
    return f'; did you mean {lower[close[0]]!r}?' if close else ''


# The settings of a scheduler's dynamic shift (SD3's, Flux's): its set_timesteps reads
# them only with use_dynamic_shifting, which needs the mu the sampling loop does not pass,
# so given alone they change nothing (FlowMatch's sigmas are the same with them).
_DYNAMIC_SHIFT_SETTINGS = ('time_shift_type', 'base_shift', 'max_shift', 'base_image_seq_len',
                           'max_image_seq_len')


def _refuse_dynamic_shift_settings(sampler: str, options: dict, settings: dict,
                                   fixed: Sequence[str]):
    """Refuse the dynamic shift's settings (with ``use_dynamic_shifting=True``, if given):
    they act only with the ``mu`` the sampling loop does not pass. (Where the objective
    fixes them, GaussianDiffusion's time_shift_type, :func:`_refuse_fixed` did.)"""
    given = {key: value for key, value in options.items()
             if key in _DYNAMIC_SHIFT_SETTINGS and key in settings and key not in fixed}
    if not given:
        return
    named = ', '.join(f'{key}={value!r}' for key, value in given.items())
    them = 'it' if len(given) == 1 else 'them'
    if options.get('use_dynamic_shifting'):  # (all of them: the mu message, named with it)
        raise ValueError(_needs_message(
            sampler, f'use_dynamic_shifting={options["use_dynamic_shifting"]!r}, {named}',
            'them', 'mu', _shift_hint(options, settings, fixed)))
    raise ValueError(f'sampler {sampler!r} cannot take {named}: '
                     f'{"it acts" if len(given) == 1 else "they act"} only with '
                     f'use_dynamic_shifting, whose set_timesteps then needs `mu`'
                     f'{_LOOP_DOES_NOT_PASS["mu"]}, which mmsora\'s sampling loop does not '
                     f'pass; leave {them} out{_shift_hint(options, settings, fixed)}')


def _least_whole_value(default) -> int:
    """The least value of a whole-number setting with ``default``: 1 where the default
    is at least 1 (a count: ``solver_order`` 0 failed in a step, "list assignment index
    out of range"; ``num_train_timesteps`` 0 in the build, "division by zero"), else 0
    (an offset: DDIM's ``steps_offset`` -1 made a timestep -1, whose
    ``alphas_cumprod[-1]`` is the noisiest). No whole-number setting of a diffusers
    scheduler takes a negative value."""
    return 1 if isinstance(default, numbers.Integral) and default >= 1 else 0


# The highest orders of diffusers' solvers with a ceiling, as their docstrings say ("The
# DPMSolver order which can be `1` or `2` or `3`"), by class (a subclass has its
# parent's): a higher one passed and stepped as the highest (DPM-Solver++'s step takes
# order 3 for anything above 2; CosineDPMSolver's made no update at all above 2).
# UniPC's solver_order is "any positive integer": no ceiling.
_HIGHEST_ORDERS = {
    'DPMSolverMultistepScheduler': {'solver_order': 3},
    'DPMSolverMultistepInverseScheduler': {'solver_order': 3},
    'DPMSolverSinglestepScheduler': {'solver_order': 3},
    'EDMDPMSolverMultistepScheduler': {'solver_order': 3},
    'DEISMultistepScheduler': {'solver_order': 3},
    'CosineDPMSolverMultistepScheduler': {'solver_order': 2},
    'SASolverScheduler': {'predictor_order': 4, 'corrector_order': 4},
}


def _highest_whole_value(scheduler: type, key: str) -> Optional[int]:
    """The highest value of ``scheduler``'s whole-number setting ``key``
    (:data:`_HIGHEST_ORDERS`, by the first of its classes listed there); None: none."""
    for cls in scheduler.__mro__:
        if cls.__name__ in _HIGHEST_ORDERS:
            return _HIGHEST_ORDERS[cls.__name__].get(key)
    return None


def _check_least_whole_values(sampler: str, options: dict, settings: dict):
    """Refuse a whole-number setting below its least value (:func:`_least_whole_value`)
    or above its highest (:func:`_highest_whole_value`: a solver's order), in our words
    (diffusers' were its arithmetic's, or none: DPM-Solver++'s solver_order=4 sampled
    as 3)."""
    from mmsora.registry import NOISE_SCHEDULERS
    scheduler = NOISE_SCHEDULERS.get(sampler)
    hints = _type_hints(scheduler)
    for key, value in options.items():
        default = settings[key]
        whole = whole_number(value)
        if whole is None or _setting_kind(hints.get(key), default)[0] != 'whole':
            continue
        least, most = _least_whole_value(default), _highest_whole_value(scheduler, key)
        if whole < least and most is None:
            raise ValueError(f'{key} must be a whole number >= {least} (a setting of '
                             f'{sampler}; its default: {default}), got {value!r}')
        if whole < least or (most is not None and whole > most):
            raise ValueError(f'{key} must be a whole number in [{least}, {most}] (a setting '
                             f'of {sampler}, whose highest order is {most}; its default: '
                             f'{default}), got {value!r}')


class _Refusal(typing.NamedTuple):
    """What a scheduler raised in a trial run (:func:`_trial_run`): ``why`` in one line
    (None: it ran), the ``stage`` it raised in (``'build'``, ``'set_timesteps'``,
    ``'step'``), and the argument of ``set_timesteps`` it asked for that the loop does
    not pass (``needs``: ``'mu'``), if any."""
    why: Optional[str] = None
    stage: Optional[str] = None
    needs: Optional[str] = None


def _one_line(error: Exception) -> str:
    """An exception's message in one line of at most 200 characters."""
    why = ' '.join(str(error).split()).rstrip('.') or type(error).__name__
    return why if len(why) <= 200 else why[:197] + '...'


def _trial_run(build: Callable, options: dict, num_steps: int) -> _Refusal:
    """Build the scheduler with ``options``, set its ``num_steps`` timesteps and take one
    step on a 1-element sample, as sampling will: what it raises, and where."""
    try:
        scheduler = build(**options)
    except Exception as error:  # (diffusers raises ValueError, NotImplementedError, ...)
        return _Refusal(_one_line(error), 'build')
    try:
        scheduler.set_timesteps(num_steps)
    except Exception as error:
        why = _one_line(error)
        # (diffusers names an argument in backquotes: "`mu` must be passed when ...")
        needs = next((name for name in inspect.signature(scheduler.set_timesteps).parameters
                      if name not in _LOOP_PASSES and f'`{name}`' in why), None)
        return _Refusal(why, 'set_timesteps', needs)
    try:
        # some settings fail only in a step (UniPC's solver_order=0 did before
        # _check_least_whole_values, DDIM's clip_sample_range='a' before the kinds)
        t, x = scheduler.timesteps[0], torch.zeros(1, 1, 1, 1)
        if hasattr(scheduler, 'scale_model_input'):
            x = scheduler.scale_model_input(x, t)
        # (a stochastic step's noise from its own generator: the global one untouched)
        step_kwargs = ({'generator': torch.Generator().manual_seed(0)}
                       if 'generator' in inspect.signature(scheduler.step).parameters
                       else {})
        scheduler.step(torch.zeros_like(x), t, x, **step_kwargs)
    except Exception as error:
        return _Refusal(_one_line(error), 'step')
    return _Refusal()


def _minimal_culprits(options: dict, refusal: _Refusal, trial: Callable) -> dict:
    """The options ``refusal`` is their doing: each left out in turn, kept out where the
    rest still meets the same refusal (``trial(rest)``: its words, its stage, what it
    needs), so one option is never named for another's reason (karras and beta sigmas'
    'Only one of ...' was said of use_dynamic_shifting given with them). One option, or a
    combination (karras and exponential sigmas); none where the steps alone do it."""
    culprits = dict(options)
    for key in options:
        rest = {k: v for k, v in culprits.items() if k != key}
        if trial(rest) == refusal:
            culprits = rest
    return culprits


def _shift_hint(options: dict, settings: dict, fixed: Sequence[str]) -> str:
    """Where the dynamic shift is refused, the fixed shift to give instead, unless it was
    given (FlowMatch's shift)."""
    shift = next((key for key in ('shift', 'flow_shift')
                  if key in settings and key not in fixed), None)
    if shift is None or shift in options:
        return ''
    return f' (for a fixed shift give {shift}=..., e.g. SD3\'s 3.0)'


def _refusal_message(sampler: str, num_steps: int, culprits: dict, refusal: _Refusal,
                     shift_hint: str = '') -> str:
    """The one line for a scheduler's ``refusal`` of the options ``culprits``: of its
    steps where there are none, of an argument the loop does not pass where it asked for
    one (``shift_hint`` said after it), else in the scheduler's words."""
    if not culprits:  # (not an option's doing: its steps)
        return f'sampler {sampler!r} with {num_steps} steps: {refusal.why}'
    named = ', '.join(f'{key}={value!r}' for key, value in culprits.items())
    them = 'it' if len(culprits) == 1 else 'them'
    if refusal.needs is not None:
        return _needs_message(sampler, named, them, refusal.needs,
                              shift_hint if refusal.needs == 'mu' else '')
    return (f'sampler {sampler!r} refused {named}: {refusal.why}; give '
            f'{"another value" if len(culprits) == 1 else "other values"}')


def _needs_message(sampler: str, named: str, them: str, needs: str, hint: str) -> str:
    """The one line for options (``named``, said as ``them``) that make ``set_timesteps``
    need an argument the loop does not pass (``needs``), ``hint`` said after it."""
    return (f'sampler {sampler!r} cannot take {named}: its set_timesteps then needs '
            f'`{needs}`{_LOOP_DOES_NOT_PASS.get(needs, "")}, which mmsora\'s sampling loop '
            f'does not pass; leave {them} out{hint}')


def is_bool(value) -> bool:
    """True or False, Python's or numpy's (a value read from an array or a .npz)."""
    return isinstance(value, (bool, np.bool_))


def whole_number(value) -> Optional[int]:
    """``value`` as Python's int where it is a whole number: an int, numpy's integers,
    a 0-d integer tensor or array (read from a tensor or a .npz); None for anything else:
    bools (Python's, numpy's, a bool tensor's), fractions and whole floats alike, words,
    tensors or arrays of more than one element."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 0:
        value = value.item()  # (an integer dtype's item is an int, a bool's a bool)
    if isinstance(value, numbers.Integral) and not is_bool(value):
        return int(value)
    return None


def scheduler_option_values(options: dict) -> dict:
    """A scheduler sampler's ``options`` as its constructor is given them: numpy's bools
    as Python's, whole numbers (:func:`whole_number`: numpy's, 0-d tensors) as Python's
    ints (diffusers keeps them in its config, which then is no JSON)."""
    def value_of(value):
        if isinstance(value, np.bool_):
            return bool(value)
        whole = whole_number(value)
        return value if whole is None else whole
    return {key: value_of(value) for key, value in options.items()}


@functools.lru_cache(maxsize=None)
def _type_hints(scheduler: type) -> dict:
    """A scheduler's constructor annotations, read once per class ({} where they do not
    evaluate: the defaults alone say). Not to be changed: the dict is shared."""
    try:
        return typing.get_type_hints(scheduler.__init__)
    except Exception:
        return {}


def _setting_kind(annotation, default):
    """What a scheduler's constructor setting takes, from its ``annotation`` (None: none)
    and ``default``, as ``(kind, choices)``: kind ``'switch'`` (a bool default),
    ``'whole'`` (an int default), ``'number'`` (a float default) or ``'word'`` (a str
    default), read from its annotation where the default is None (FlowMatch's
    shift_terminal: float; DPM-Solver's variance_type: Literal['learned',
    'learned_range']); None where neither says (left to the scheduler). A None default
    is never taken as a switch: diffusers annotates UniPC's sigma_max and shift_terminal,
    numbers, as bool. ``choices``: the annotation's Literal words, if any."""
    members = _annotation_members(annotation) if annotation is not None else []
    choices = tuple(m for m in members if isinstance(m, str))
    if default is not None:
        types_ = [type(default)]
    else:
        types_ = [type(m) if isinstance(m, str) else m for m in members]
        if not types_ or not all(isinstance(t, type) for t in types_) or bool in types_:
            return None, choices
    if all(t is bool for t in types_):
        return 'switch', choices
    if all(issubclass(t, numbers.Integral) and t is not bool for t in types_):
        return 'whole', choices
    if all(issubclass(t, numbers.Real) and t is not bool for t in types_):
        return 'number', choices
    if all(issubclass(t, str) for t in types_):
        return 'word', choices
    return None, choices


def _annotation_members(annotation) -> list:
    """The types and Literal values an annotation allows, None's type left out."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return [arg for arg in typing.get_args(annotation) if arg is not None]
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _annotation_members(arg)]
    if annotation is type(None):
        return []
    return [annotation]


# The arguments of a scheduler's set_timesteps that scheduler_sample_loop passes (the
# steps, the device); diffusers' pipelines pass others (mu, sigmas, timesteps) that an
# option may make it need: what they are, for check_scheduler_options' message.
_LOOP_PASSES = ('num_inference_steps', 'device')
_LOOP_DOES_NOT_PASS = {
    'mu': (" (SD3's and Flux's resolution-dependent shift, which their pipelines compute "
           "from the picture's token count)"),
}


def check_num_steps(num_steps, minimum: int = 1, maximum: Optional[int] = None,
                    why: str = '') -> int:
    """``num_steps`` as Python's int, or a one-line ValueError unless it is a whole
    number (:func:`whole_number`: Python's or numpy's int, a 0-d integer tensor or
    array; not a bool) in ``[minimum, maximum]`` (no upper bound where ``maximum`` is
    None): the step count of every objective's ``check_sample_options``, each with its
    own bounds, which hands the int on to its sampler (a 0-d tensor reached DDPM's
    respacing as ``str(num_steps)``, 'tensor(5)'). ``why``: what the bounds come from,
    said in parentheses."""
    whole = whole_number(num_steps)
    if whole is not None and whole >= minimum and (maximum is None or whole <= maximum):
        return whole
    bounds = f'>= {minimum}' if maximum is None else f'in [{minimum}, {maximum}]'
    # ('10' and 2.0 are >= 1: what is wrong with them is that they are no whole number)
    raise ValueError(f'num_steps must be {"" if whole is not None else "a whole number "}'
                     f'{bounds}{f" ({why})" if why else ""}, got {num_steps!r}')


def check_sample_settings(diffusion, settings: dict, own: Sequence[str] = ()):
    """A ``sample_cfg``'s sampler and sampler options against the objective
    ``diffusion`` (its ``samplers()`` and ``SAMPLER_OPTIONS``, and the options' values
    and the steps where it has ``check_sample_options``: the check its ``sample``
    makes first, not a copy of it), without sampling; and the settings
    ``LatentDiffusion.sample`` judges first, ``precision`` and ``cfg_scale`` (a
    ``cfg_scale`` given is passed to it as it is: None or '4' is refused there, so here;
    NaN got through tools/infer.py's checks to the weights). ``own``: the keys the
    caller takes itself (``LatentDiffusion.sample``'s arguments). Raises the same
    one-line ValueError."""
    from mmsora.models.latent_diffusion import check_cfg_scale, check_sampling_precision
    check_sampling_precision(settings.get('precision'))
    if 'cfg_scale' in settings:
        check_cfg_scale(settings['cfg_scale'])
    if not callable(getattr(diffusion, 'samplers', None)) or 'sampler' not in \
            inspect.signature(diffusion.sample).parameters:
        return  # an objective of one's own with loss and sample alone
    sampler = settings.get('sampler') or keyword_defaults(diffusion.sample).get('sampler')
    options = {k: v for k, v in settings.items()
               if k not in (*SAMPLE_SETTINGS, *NOT_SAMPLE_ARGS, *own)}
    check = getattr(diffusion, 'check_sample_options', None)
    if callable(check):
        # the name, the options and their values (what its sample checks first), and
        # the steps where it takes them (ours; unset: its sample's default)
        if 'num_steps' in inspect.signature(check).parameters and \
                settings.get('num_steps') is not None:
            options['num_steps'] = settings['num_steps']
        check(sampler, **options)
        return
    check_sampler_name(sampler, diffusion.samplers(), type(diffusion).__name__)
    check_sampler_options(sampler, options,
                          getattr(diffusion, 'SAMPLER_OPTIONS', {}).get(sampler, ()))


def scheduler_sample_loop(scheduler,
                          model_output_fn: Callable,
                          x: torch.Tensor,
                          num_steps: int,
                          generators: Optional[Sequence[torch.Generator]] = None,
                          progress: bool = False,
                          desc: str = 'sampling') -> torch.Tensor:
    """Run a diffusers scheduler from noise ``x`` to a sample.

    Args:
        scheduler: A diffusers scheduler (``set_timesteps``, ``timesteps``, ``step``).
        model_output_fn: ``fn(model_in, t) -> model_output`` as ``scheduler.step``
            expects it; ``t`` is the scheduler's timestep (a 0-d tensor).
        x: Starting noise (N, C, ...), unit variance (scaled here by the
            scheduler's ``init_noise_sigma`` where it has one).
        num_steps: Number of scheduler steps.
        generators: One generator per sample for stochastic schedulers (diffusers
            takes a list), so a sample's noise depends on its own seed only.
        progress: Show a progress bar.
        desc: Progress bar label.

    Returns:
        The sample, same shape as ``x``.

    Raises:
        SamplerStepError: A step turned finite inputs into NaN or inf (one line naming the
            sampler, the steps and the schedule).
    """
    scheduler.set_timesteps(num_steps, device=x.device)
    _ancestral_sigmas_in_float64(scheduler, x.device)
    # Flow-matching schedulers start at unit variance and have no such attribute.
    x = x * getattr(scheduler, 'init_noise_sigma', 1.0)
    # Stochastic schedulers take a generator; deterministic ones have no such argument.
    step_kwargs = ({'generator': generators}
                   if 'generator' in inspect.signature(scheduler.step).parameters else {})
    # NaN or inf from finite inputs is a step's arithmetic, not the model's: said after
    # the loop, else the samples came out NaN and the tools blamed the weights. (NaN
    # from the model itself is left to the tools' warnings.) The flags stay on the
    # device until then: no sync a step.
    made_nan = []
    for t in tqdm(scheduler.timesteps, desc=desc, disable=not progress):
        # Karras-style schedulers scale the input; flow-matching ones feed x as it is.
        model_in = (scheduler.scale_model_input(x, t)
                    if hasattr(scheduler, 'scale_model_input') else x)
        out = model_output_fn(model_in, t)
        prev = scheduler.step(out, t, x, **step_kwargs).prev_sample
        made_nan.append(torch.isfinite(x).all() & torch.isfinite(out).all()
                        & ~torch.isfinite(prev).all())
        x = prev
    if made_nan and bool(torch.stack(made_nan).any()):
        i = int(torch.stack(made_nan).nonzero()[0, 0])
        raise SamplerStepError(_step_failed_message(scheduler, num_steps, i, scheduler.timesteps[i],
                                             out.dtype))
    return x


class SamplerStepError(ValueError):
    """A sampler's step turned finite inputs into NaN or inf: its arithmetic, not the
    model (a ValueError: the tools print it as one line; SampleVisualizationHook logs
    it and training goes on)."""


# Ancestral schedulers split each step's noise level into a deterministic and a noise
# part, sigma_down = sqrt(sigma_to^2 - sigma_up^2): where one step falls from a very high
# sigma (squaredcos_cap_v2's first, 2e4) to a low one (1.75 at 4 steps), the
# difference is below float32's rounding and came out negative, its root NaN.
_ANCESTRAL = ('EulerAncestralDiscreteScheduler', 'KDPM2AncestralDiscreteScheduler')


def _ancestral_sigmas_in_float64(scheduler, device: torch.device):
    """Hand an ancestral scheduler's sigma table to its ``step`` in float64 (its noise
    split, sigma_up and sigma_down, is then float64; the samples keep their dtype).
    MPS has no float64."""
    sigmas = getattr(scheduler, 'sigmas', None)
    if (type(scheduler).__name__ in _ANCESTRAL and isinstance(sigmas, torch.Tensor)
            and sigmas.dtype == torch.float32 and device.type != 'mps'):
        scheduler.sigmas = sigmas.double()


def _schedule_name(config) -> str:
    """The noise schedule of a scheduler's config in words: its ``beta_schedule``, or
    the name of DiT's schedule its ``trained_betas`` (an objective's own) are."""
    betas = config.get('trained_betas')
    if betas is None:
        return ', '.join(f'{k} {config[k]!r}' for k in ('beta_schedule', 'shift')
                         if k in config)
    import numpy as np

    from mmsora.diffusion.gaussian import get_named_beta_schedule  # (it imports us)
    for name in ('linear', 'squaredcos_cap_v2'):
        named = get_named_beta_schedule(name, len(betas))
        if np.allclose(np.asarray(betas, dtype=np.float64), named, rtol=1e-6, atol=0):
            return f'beta_schedule {name!r}'
    return 'betas of its own'


def _step_failed_message(scheduler, num_steps, index, t, dtype) -> str:
    """The one line for a scheduler step that turned finite inputs into NaN or inf."""
    schedule = _schedule_name(getattr(scheduler, 'config', {}))
    sigmas = getattr(scheduler, 'sigmas', None)
    if isinstance(sigmas, torch.Tensor) and index + 1 < len(sigmas):
        # (the jump an ancestral step splits: where it fails)
        schedule += (f'{", " if schedule else ""}sigma {float(sigmas[index]):.3g} to '
                     f'{float(sigmas[index + 1]):.3g}')
    precision = ('' if dtype in (torch.float32, torch.float64) else
                 f'; in {str(dtype).replace("torch.", "")}: or sample at a wider precision')
    return (f'sampler {type(scheduler).__name__} with {num_steps} steps turned finite '
            f'inputs into NaN or inf at step {index + 1} of {num_steps} (timestep '
            f'{float(t):g}{", " + schedule if schedule else ""}): the scheduler\'s '
            f'arithmetic, not the model; sample with another step count (e.g. '
            f'{num_steps + 1}) or another sampler{precision}')


def scheduler_noise_level(scheduler, t):
    """``(alpha_t, sigma_t)`` of the model's input at the scheduler's timestep ``t``,
    ``x_t = alpha_t * x0 + sigma_t * eps``, as the scheduler's ``step`` reads it.

    Sigma-table schedulers (Euler, Euler-ancestral, DPM-Solver++, UniPC) step on
    ``sigmas[step_index]``, where ``t`` may lie between training timesteps (Euler's
    timesteps are fractional, its sigmas interpolated); their model input is
    ``x / sqrt(sigma^2 + 1)`` (Euler's ``scale_model_input``; DPM-Solver++ and UniPC
    work on that scale), so ``alpha_t = 1 / sqrt(sigma^2 + 1)``, ``sigma_t = sigma *
    alpha_t``. DDPM and DDIM read ``alphas_cumprod[t]`` at their integer timesteps.
    Call it for the current step, before that step's ``step``.
    """
    sigmas = getattr(scheduler, 'sigmas', None)
    if sigmas is not None and hasattr(scheduler, '_init_step_index'):
        if scheduler.step_index is None:  # what step would do first (DPM-Solver++, UniPC)
            scheduler._init_step_index(t)
        sigma = sigmas[scheduler.step_index]
        if hasattr(scheduler, '_sigma_to_alpha_sigma_t'):  # DPM-Solver++, UniPC
            return scheduler._sigma_to_alpha_sigma_t(sigma)
        alpha = (sigma**2 + 1)**-0.5
        return alpha, sigma * alpha
    alphas_cumprod = getattr(scheduler, 'alphas_cumprod', None)
    if alphas_cumprod is None:
        raise ValueError(f'{type(scheduler).__name__} has neither sigmas nor alphas_cumprod: '
                         'the noise level of its steps is unknown, so an x0 prediction '
                         'cannot be turned into the epsilon it takes')
    alpha_bar = alphas_cumprod[int(t)]
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def epsilon_from_x0(scheduler, x0, x_t, t):
    """The epsilon a scheduler's ``step`` takes, from a prediction of x0 at its input
    ``x_t`` (what the model was fed) and timestep ``t``: ``(x_t - alpha_t x0) / sigma_t``
    (:func:`scheduler_noise_level`), the inverse of the x0 every scheduler derives
    from epsilon, so its step goes to the model's x0 (as DiT's DDIM re-derives epsilon
    from x0, ``GaussianDiffusion._predict_eps_from_xstart``). Works for schedulers
    without ``prediction_type='sample'`` too (Euler-ancestral)."""
    alpha, sigma = scheduler_noise_level(scheduler, t)
    alpha, sigma = (torch.as_tensor(v, dtype=x_t.dtype, device=x_t.device)
                    for v in (alpha, sigma))
    return (x_t - alpha * x0) / sigma
