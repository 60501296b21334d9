"""A training config's entries against the classes they build, before the Runner starts.

mmengine's Runner builds the loop, the dataset, the optimizer wrapper, the parameter
schedulers and the hooks only after printing the environment and the whole config and
making the work dir; a typo in one of them (``weight_decy``, ``star_factor``,
``momentm``, ``type='CosineAnealingLR'``) then stopped the run there, or, for keys
mmengine hands on (a hook's ``**kwargs``), at the first use. ``check_training_keys``
reads every such entry against its class's signature at once: nothing is built or
read. ``tools/train.py`` calls it before the strategy presets rewrite the config, so
that the names in its messages are the ones the user wrote. The values are read too,
where the signature plainly says what they are (``--cfg-options
model.denoiser.depth=three`` leaves a str, which failed as a traceback after the
Runner's start-up): :func:`check_config_values`.
"""
import difflib
import importlib
import inspect
import numbers
import types
import typing
from typing import Optional

from mmsora.utils.cli import UserError
from mmsora.utils.error_messages import (missing_arguments_message, unknown_key_message,
                                         unknown_type_message, wrong_type_message)

__all__ = ['accepted_arguments', 'check_config_keys', 'check_config_values',
           'check_denoiser_guides', 'check_guidance', 'check_model_config',
           'check_training_keys', 'registered_class', 'check_sample_settings_of',
           'denoiser_class', 'model_setting', 'wanted_value']


def _forwarding_bases() -> tuple:
    """Classes known to hand their ``**kwargs`` on to their bases' ``__init__``:
    mmengine's optimizer wrappers, parameter schedulers (through the LR / momentum
    mixins), averaged models (our float32 EMA) and EMA hooks (ours to mmengine's,
    whose own ``**kwargs`` build the average) and the evaluation's metrics (to
    ``SampleMetric``). Elsewhere ``**kwargs`` may go anywhere (torch's
    ZeroRedundancyOptimizer hands them to the optimizer it builds)."""
    from mmengine.hooks import EMAHook
    from mmengine.model.averaged_model import BaseAveragedModel
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

    from mmsora.evaluation.metrics.base import SampleMetric
    return OptimWrapper, _ParamScheduler, BaseAveragedModel, EMAHook, SampleMetric


def _signature(obj) -> inspect.Signature:
    """``obj``'s signature, its annotations written as text (``from __future__ import
    annotations``) evaluated; each one that does not evaluate left as text (a name the
    module imports only for type checkers: torch's DataLoader has one)."""
    try:
        return inspect.signature(obj, eval_str=True)
    except Exception:
        signature = inspect.signature(obj)
    namespace = getattr(inspect.unwrap(obj), '__globals__', {})
    params = []
    for p in signature.parameters.values():
        if isinstance(p.annotation, str):
            try:
                p = p.replace(annotation=eval(p.annotation, namespace))
            except Exception:
                pass
        params.append(p)
    return signature.replace(parameters=params)


def accepted_arguments(cls):
    """``(names, complete)``: the arguments ``cls`` takes by name, and whether that is
    all of them. A class of :func:`_forwarding_bases` whose ``__init__`` takes
    ``**kwargs`` takes its bases' arguments too, collected along the method
    resolution order until an ``__init__`` without ``**kwargs``; any other class with
    ``**kwargs`` is not complete, nor is one whose ``**kwargs`` go past every base
    (mmengine's EMA hook builds its average with them). A function (a
    ``collate_fn``) takes its arguments after the first (the batch). The names map to
    their ``inspect.Parameter``, annotations written as text evaluated where they can
    be (:func:`check_config_values` reads them)."""
    def named(params):
        return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def takes_any(params):
        return any(p.kind == p.VAR_KEYWORD for p in params)

    if not inspect.isclass(cls):
        params = list(_signature(cls).parameters.values())[1:]
        return named(params), not takes_any(params)
    found, passed_on = {}, False
    follow = issubclass(cls, _forwarding_bases())
    for klass in cls.__mro__:
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        if klass is object:
            if passed_on:  # **kwargs held back (an EMA hook's)
                return found, False
            params = list(_signature(cls).parameters.values())  # (__new__'s,
            return named(params), not takes_any(params)  # or none at all)
        passed_on = True
        params = list(_signature(init).parameters.values())[1:]  # after self
        for name, p in named(params).items():
            found.setdefault(name, p)
        if not takes_any(params):
            return found, True
        if not follow:
            return found, False
    return found, False


def check_config_keys(entry: dict, cls, where: str, given_by_runner=(), also=(),
                      missing_too: bool = False, past_kwargs: bool = False,
                      extra: Optional[dict] = None, parts: Optional[dict] = None) -> None:
    """Refuse keys of a config ``entry`` that ``cls`` does not take (a typo), naming
    the close ones; with ``missing_too`` also the arguments it needs and the entry
    lacks. ``given_by_runner``: arguments the Runner passes itself (not the config's);
    ``also``: keys the Runner reads beside them (a hook's ``priority``); ``extra``:
    more arguments taken, by name (an EMA hook's average's); ``parts``: the classes of
    the entry's own entries, by key (an optimizer wrapper's ``optimizer``), whose
    arguments an unknown key is named as (:func:`_part_taking`). mmengine's own keys
    (``type``, ``_scope_``) are skipped; so is a class that takes any keyword
    (:func:`accepted_arguments`), unless ``past_kwargs`` (nothing takes them further).
    Then the values of the arguments it names (those of a class taking any keyword
    too): :func:`check_config_values`."""
    params, complete = accepted_arguments(cls)
    if extra:
        params = {**params, **extra}
        complete = True
    params = {name: p for name, p in params.items() if name not in given_by_runner}
    if complete or past_kwargs:
        keys = [key for key in entry if key not in ('type', '_scope_', *also)]
        name = getattr(cls, '__name__', str(cls))
        for key in keys:
            if key not in params:
                part = _part_taking(key, parts, where)  # (over close names: exact)
                raise UserError(f'{where}: ' + (
                    f'unknown config key {key!r} for {name}; {part}' if part else
                    unknown_key_message(name, key, skip=given_by_runner, names=list(params))))
        missing = [name for name, p in params.items()
                   if p.default is p.empty and name not in keys]
        if missing_too and missing:
            raise UserError(f'{where}: {missing_arguments_message(name, missing)}')
    check_config_values(entry, params, where)


def _part_taking(key, parts, where: str) -> str:
    """``'KEY is its optimizer's (AdamW): set WHERE.optimizer.KEY'`` where a class
    of ``parts`` (key: class) takes ``key``, else ''. An argument one level too high
    (``optim_wrapper.lr``, ``model.depth``) was told only the keys the entry takes."""
    for part, cls in (parts or {}).items():
        if inspect.isclass(cls) and key in accepted_arguments(cls)[0]:
            return f"{key} is its {part}'s ({cls.__name__}): set {where}.{part}.{key}"
    return ''


def _annotation_classes(annotation):
    """``(classes, optional)``: the classes an annotation names, alone or in a Union /
    Optional (None left out; ``optional``: it was there), or ``(None, False)`` where it
    names anything else (a generic such as List[int], Any, a Literal, text that did not
    evaluate): such an argument's values are not judged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
    else:
        members = (annotation,)
    classes = [m for m in members if m is not type(None)]
    if not classes or not all(isinstance(m, type) and m is not typing.Any for m in classes):
        return None, False
    return classes, len(classes) < len(members)


def wanted_value(param: inspect.Parameter, value) -> Optional[str]:
    """What an argument's value must be, in words (``a whole number (int)``), where
    ``value`` is plainly not that; None where it may be, or the argument does not say.
    Judged: a str where the annotation names a number or a bool (int, float, bool,
    typing's numbers, Optional or a Union of them, with classes beside that take no str:
    AdamW's lr, Union[float, Tensor]), a bool (Python's or numpy's) where it names a
    number and nothing taking a bool, a float that is not whole where it names whole
    numbers alone (a whole one, 4e5, is left to the class: mmengine takes it); a str that
    does not read as a number where there is no annotation but the default is a number
    (a str that does, ``scale_factor='0.13025'``, is the class's to parse: it does).
    Anything else is left to the class (a str it parses itself: Union[bool, int, str],
    a generic, Any, an argument without annotation or number default).
    (mmsora.diffusion.scheduler_sampling._setting_kind judges sampler settings alike.)"""
    # (here, not at the top: mmsora.diffusion imports diffusers, which a check of the
    # config alone does not need)
    from mmsora.diffusion.scheduler_sampling import is_bool
    fraction = (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
                and not is_bool(value) and not float(value).is_integer())
    if not (isinstance(value, str) or is_bool(value) or fraction):
        return None
    if param.annotation is param.empty:
        default = param.default
        if (isinstance(value, str) and isinstance(default, (int, float))
                and not isinstance(default, bool) and not _reads_as_number(value)):
            return f'a number (its default is {default!r})'
        return None
    classes, optional = _annotation_classes(param.annotation)
    if classes is None:
        return None
    try:
        counted = [c for c in classes if issubclass(c, numbers.Number) and c is not bool]
        switch = bool in classes
        if not (counted or switch):
            return None
        if isinstance(value, str):
            takes = any(issubclass(str, c) for c in classes)  # (a str it parses itself)
        elif fraction:  # 3.5 for a depth: a TypeError in the model's build, after the
            # Runner's start-up; judged where the annotation names whole numbers alone
            takes = not (counted and all(c is bool or issubclass(c, numbers.Integral)
                                         for c in classes))
        else:  # a bool is an int to Python, but True for a depth is a mistake; bool
            # itself (Union[bool, int]) and object take it
            takes = switch or any(issubclass(bool, c) and not issubclass(c, numbers.Number)
                                  for c in classes)
    except TypeError:  # (a Protocol that issubclass cannot test)
        return None
    if takes:
        return None
    words = []
    if counted and all(issubclass(c, numbers.Integral) for c in counted):
        words.append('a whole number (int)')
    elif counted:
        names = [c.__name__ for c in counted if c in (int, float, complex)]
        words.append('a number' + (f' ({" or ".join(names)})' if names else ''))
    if switch:
        words.append('True or False (bool)')
    if optional:
        words.append('None')
    return ' or '.join(words)


def _reads_as_number(text: str) -> bool:
    """``float(text)`` works (``'0.13025'``, ``'1e-3'``, ``'100'``; not ``'three'``)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_config_values(entry: dict, params: dict, where: str) -> None:
    """Refuse a value of ``entry`` that is plainly not what its argument in ``params``
    (names to ``inspect.Parameter``, :func:`accepted_arguments`) takes
    (:func:`wanted_value`), naming the key after ``where``: ``--cfg-options``
    leaves what does not parse as a str (``model.denoiser.depth=three``,
    ``optim_wrapper.optimizer.lr=1e-3x``), which failed as a traceback after the
    Runner's start-up, or trained wrongly (``learn_sigma='false'`` is true)."""
    for key, value in entry.items():
        param = params.get(key)
        wanted = wanted_value(param, value) if isinstance(param, inspect.Parameter) else None
        if wanted is not None:
            raise UserError(wrong_type_message(f'{where}.{key}', wanted, value))


def registered_class(entry, registry, where: str, default=None):
    """The class (or function) a config entry names, or None where it names none (a
    value that is not a dict, or a dotted name that does not import: the Runner says
    why). An unknown name is refused now, with the close ones, after ``where``."""
    if not isinstance(entry, dict):
        return None
    kind = entry.get('type', default)
    if not isinstance(kind, str):
        return kind if callable(kind) else None
    try:
        found = registry.get(kind)
        if found is None:  # DeepSpeedOptimWrapper and DeepSpeed's optimizers register
            # (when the strategies are imported)
            importlib.import_module('mmengine._strategy')
            found = registry.get(kind)
    except Exception:  # a dotted name that does not import: the Runner says it
        return None
    if found is None:
        raise UserError(f'{where}: {unknown_type_message(kind, registry.name)}')
    return found


def _check_train_loop(cfg):
    """``train_cfg`` against its loop; returns the loop's class (None if unknown)."""
    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

    from mmsora.registry import LOOPS
    loop = dict(cfg.get('train_cfg') or {})
    if 'type' in loop:
        cls = registered_class(loop, LOOPS, 'train_cfg')
        if cls is None:
            return None
    else:
        cls = EpochBasedTrainLoop if loop.pop('by_epoch', False) else IterBasedTrainLoop
    for key in ('max_iters', 'max_epochs', 'val_interval', 'val_begin'):
        value = loop.get(key)  # mmengine takes int(v) where int(v) == v (4e5 too)
        whole = (isinstance(value, (int, float)) and not isinstance(value, bool)
                 and float(value).is_integer())
        if value is not None and (not whole or value < (0 if key == 'val_begin' else 1)):
            raise UserError(f'train_cfg.{key}={value!r}: '
                            + ('a number of iterations' if isinstance(value, str) else
                               'a whole number') + ('' if key == 'val_begin' else
                                                    ' (at least 1)'))
    # (after the counts, which have words of their own: train_cfg.max_iters='ten')
    check_config_keys(loop, cls, 'train_cfg', given_by_runner=('runner', 'dataloader'))
    return cls


def _check_sections(cfg) -> None:
    """The sections a training run needs are there (a config written from scratch, or
    a ``_base_`` list without the schedule, failed with an AttributeError)."""
    for key, hint in (('train_dataloader', 'inherit a dataset config from '
                       'configs/_base_/datasets/ or give one'),
                      ('optim_wrapper', 'inherit a schedule from configs/_base_/schedules/ '
                       "or give one, e.g. optim_wrapper = dict(optimizer=dict(type='AdamW', "
                       'lr=1e-4))'),
                      ('train_cfg', 'e.g. train_cfg = dict(max_iters=400000)')):
        if not cfg.get(key):
            raise UserError(f'the config has no {key}: {hint}')


def _swapped(a: str, b: str) -> bool:
    """Whether ``a`` is ``b`` with two neighbouring letters swapped (trian / train)."""
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return (len(a) == len(b) and len(diff) == 2 and diff[1] == diff[0] + 1
            and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])


def _note_top_level(cfg) -> None:
    """Say so when a top-level key is one letter off a section the Runner or the tools
    read (``trian_cfg``: taken as a variable of the config's own, and the section it
    meant left as the base has it, without a word). A note, not a refusal: a variable
    of one's own may be that close and used (``vae_cfg`` in ``model.vae``)."""
    from mmsora.utils.cfg_options import edit_distance, known_top_level
    from mmsora.utils.cli import note
    known = known_top_level()
    for key in cfg.keys():
        if key in known or len(key) <= 4:
            continue
        meant = min(known, key=lambda name: (not _swapped(key, name), edit_distance(key, name)))
        if edit_distance(key, meant) == 1 or _swapped(key, meant):
            note(f'{key} is not a section the Runner or the tools read; if it stands for '
                 f'{meant}, rename it (a variable of the config\'s own is fine)')


# The sections of an mmcv 1.x config (MMDetection 2.x, MMEditing 0.x) whose settings
# mmengine's Runner reads elsewhere, each with where they go now (workflow and
# dist_params are left out: copied from an mmcv 1.x runtime, they change nothing).
_MMCV1_SECTIONS = {
    'optimizer': "optim_wrapper = dict(optimizer=dict(type='AdamW', lr=...))",
    'optimizers': "optim_wrapper = dict(optimizer=dict(type='AdamW', lr=...))",
    'optimizer_config': 'optim_wrapper = dict(clip_grad=dict(max_norm=...), '
                        'accumulative_counts=...)',
    'lr_config': "param_scheduler = [dict(type='LinearLR', by_epoch=False, ...), ...]",
    'momentum_config': "param_scheduler = [dict(type='CosineAnnealingMomentum', ...)]",
    'runner': "train_cfg = dict(type='IterBasedTrainLoop', max_iters=...)",
    'total_iters': 'train_cfg = dict(max_iters=...)',
    'total_epochs': 'train_cfg = dict(max_iters=...) (mmsora runs count iterations)',
    'checkpoint_config': 'default_hooks = dict(checkpoint=dict(interval=...))',
    'log_config': 'default_hooks = dict(logger=dict(interval=...))',
    'data': 'train_dataloader = dict(batch_size=..., num_workers=..., dataset=dict(...))',
    'fp16': 'tools/train.py --amp',
    'resume_from': 'tools/train.py --resume CKPT',
}


def _names_read(path, seen=None) -> set:
    """The names a Python config file and its ``_base_`` files read (``optimizer`` in
    ``optim_wrapper = dict(optimizer=optimizer)``), from their source; none for a
    config not read from a .py file."""
    import ast
    import os.path as osp

    from mmengine.config import Config
    seen = set() if seen is None else seen
    if not (isinstance(path, str) and path.endswith('.py') and osp.isfile(path)) or \
            path in seen:
        return set()
    seen.add(path)
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
        bases = [Config._get_cfg_path(b, path)[0] for b in Config._get_base_files(path)
                 if '::' not in b]
    except Exception:  # (the config was read: a base not found is mmengine's to say)
        return set()
    names = {node.id for node in ast.walk(tree)
             if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    # (a base's variable read as {{_base_.optimizer}} or _base_.optimizer)
    names |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
              and isinstance(node.value, ast.Name) and node.value.id == '_base_'}
    for base in bases:
        names |= _names_read(base, seen)
    return names


def _held_elsewhere(cfg, key: str) -> bool:
    """Whether every setting of ``cfg[key]`` (a dict) is in effect in a dict inside
    another top-level entry: mmengine's dump of ``optim_wrapper =
    dict(optimizer=optimizer)`` writes the value in both places (merged there with the
    base's other settings) and the name read nowhere (``tools/train.py
    WORK_DIR/cfg.py``). Then nothing of it is lost."""
    value = cfg.get(key)
    if not isinstance(value, dict) or not value:
        return False

    def holds(entry) -> bool:
        if isinstance(entry, dict):
            return all(k in entry and entry[k] == v for k, v in value.items()) or \
                any(holds(v) for v in entry.values())
        if isinstance(entry, (list, tuple)):
            return any(holds(v) for v in entry)
        return False
    return any(holds(entry) for name, entry in cfg.items() if name != key)


def _check_mmcv1_sections(cfg) -> None:
    """Refuse a section of an mmcv 1.x config (``optimizer = dict(type='AdamW',
    lr=2e-4)``, ``lr_config``, ``checkpoint_config``, ``runner``): mmengine's Runner
    reads none of them, so the run trained with its base's optimizer, schedule and
    checkpoints, without a word. One the config file (or a base) reads is a variable of
    its own (``optim_wrapper = dict(optimizer=optimizer)``), and used."""
    read = _names_read(getattr(cfg, 'filename', None))
    for key, place in _MMCV1_SECTIONS.items():
        if key not in cfg or cfg.get(key) is None or key in read:  # (None: nothing
            continue  # set, as an mmcv 1.x runtime's resume_from = None)
        if _held_elsewhere(cfg, key):  # (the dump of a run whose config read it: the
            continue  # dumped file has its value where it was read, not its name)
        raise UserError(f"{key} is an mmcv 1.x section, which mmengine's Runner does not "
                        f'read (the run would go on without it): give it as {place} '
                        '(a variable of your own: rename it)')


# What the Runner reads from these sections (mmengine 0.10: Runner.setup_env and
# Runner.build_dataloader, which hands the rest of train_dataloader to DataLoader).
_ENV_KEYS = ('cudnn_benchmark', 'mp_cfg', 'dist_cfg', 'resource_limit')
_LOADER_KEYS = ('dataset', 'sampler', 'batch_sampler', 'collate_fn', 'worker_init_fn',
                'num_batch_per_epoch', 'disable_subprocess_warning')


def _check_runtime(cfg) -> None:
    """``randomness`` against ``Runner.set_randomness``, ``env_cfg`` against what
    ``Runner.setup_env`` reads (a typo there was a TypeError traceback, or nothing
    at all), and the training loader's own keys against torch's DataLoader (a typo
    failed after the Runner's start-up output)."""
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader
    randomness = cfg.get('randomness')
    if isinstance(randomness, dict):
        check_config_keys(randomness, Runner.set_randomness, 'randomness')
    env = cfg.get('env_cfg')
    if isinstance(env, dict):
        for key in env:
            if key not in _ENV_KEYS:
                raise UserError('env_cfg: ' + unknown_key_message(
                    'the Runner\'s env_cfg', key, names=list(_ENV_KEYS)))
    loader = cfg.get('train_dataloader')
    if isinstance(loader, dict):
        params, _ = accepted_arguments(DataLoader)
        names = [*_LOADER_KEYS, *(n for n in params if n not in _LOADER_KEYS)]
        for key in loader:
            if key not in names:
                raise UserError('train_dataloader: ' + unknown_key_message(
                    'DataLoader', key, names=names))
        check_config_values(loader, params, 'train_dataloader')


def _check_iteration_based(cfg, loop) -> None:
    """mmengine's schedulers and checkpoint hook count epochs unless told otherwise
    (``by_epoch=True`` is their default); in an iteration-based run (every mmsora
    config) a schedule left at it never stepped (the learning rate stayed at its first
    value for the whole run) and the checkpoint hook saved only at the end, both
    without a word."""
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import IterBasedTrainLoop

    from mmsora.registry import HOOKS
    if not (inspect.isclass(loop) and issubclass(loop, IterBasedTrainLoop)):
        return
    for where, scheduler in _schedulers(cfg):
        if isinstance(scheduler, dict) and scheduler.get('by_epoch', True) and not \
                scheduler.get('convert_to_iter_based'):
            raise UserError(f'{where}: by_epoch=True (mmengine\'s default) in an '
                            'iteration-based run: it would never step; set by_epoch=False '
                            '(begin and end in iterations)')
        begin, end = ((scheduler.get('begin', 0), scheduler.get('end'))
                      if isinstance(scheduler, dict) else (0, None))
        if isinstance(begin, numbers.Real) and isinstance(end, numbers.Real) and end <= begin:
            # (mmengine said it after the Runner's start-up, leaving a work dir)
            raise UserError(f'{where}: end={end} is not after begin={begin}: a schedule '
                            'runs from begin to end; raise end or lower begin')
    checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(checkpoint, dict) and checkpoint.get('by_epoch', True):
        cls = registered_class(checkpoint, HOOKS, 'default_hooks.checkpoint')
        if inspect.isclass(cls) and issubclass(cls, CheckpointHook):
            raise UserError('default_hooks.checkpoint: by_epoch=True (mmengine\'s default) '
                            'in an iteration-based run: it would save only at the end; set '
                            'by_epoch=False (interval in iterations)')


def _check_loader(cfg) -> None:
    """The training loader's dataset (and the transforms of its ``pipeline``: a typo
    there failed after the Runner's start-up output), sampler and ``collate_fn``."""
    from mmsora.registry import DATA_SAMPLERS, DATASETS, FUNCTIONS, TRANSFORMS
    loader = cfg.get('train_dataloader') or {}
    for where, registry, given, missing_too in (
            ('dataset', DATASETS, (), True),
            ('sampler', DATA_SAMPLERS, ('dataset',), False),
            ('collate_fn', FUNCTIONS, (), False)):
        entry = loader.get(where)
        cls = registered_class(entry, registry, f'train_dataloader.{where}')
        if cls is not None:
            check_config_keys(entry, cls, f'train_dataloader.{where}', given_by_runner=given,
                              missing_too=missing_too)
    pipeline = (loader.get('dataset') or {}).get('pipeline')
    for i, step in enumerate(pipeline if isinstance(pipeline, (list, tuple)) else []):
        where = f'train_dataloader.dataset.pipeline[{i}]'
        cls = registered_class(step, TRANSFORMS, where)
        if inspect.isclass(cls):
            check_config_keys(step, cls, where)


def _check_visualizer(cfg) -> None:
    """The visualizer and its backends (a typo failed after the start-up output)."""
    from mmsora.registry import VISBACKENDS, VISUALIZERS
    visualizer = cfg.get('visualizer')
    cls = registered_class(visualizer, VISUALIZERS, 'visualizer')
    if inspect.isclass(cls):
        check_config_keys(visualizer, cls, 'visualizer', also=('name',),
                          given_by_runner=('save_dir',))
    backends = (visualizer or {}).get('vis_backends') if isinstance(visualizer, dict) else None
    for i, backend in enumerate(backends if isinstance(backends, (list, tuple)) else []):
        where = f'visualizer.vis_backends[{i}]'
        cls = registered_class(backend, VISBACKENDS, where)
        if inspect.isclass(cls):
            check_config_keys(backend, cls, where, given_by_runner=('save_dir',))
            _check_backend_installed(cls.__name__, where)


# mmengine's logging backends and the package each imports when the run starts (an
# ImportError traceback after the start-up output without it)
_BACKEND_PACKAGES = {'TensorboardVisBackend': 'tensorboard', 'WandbVisBackend': 'wandb',
                     'MLflowVisBackend': 'mlflow', 'ClearMLVisBackend': 'clearml',
                     'NeptuneVisBackend': 'neptune', 'DVCLiveVisBackend': 'dvclive',
                     'AimVisBackend': 'aim'}


def _check_backend_installed(name: str, where: str) -> None:
    import importlib.util
    package = _BACKEND_PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise UserError(f'{where}: {name} needs the {package} package, which is not '
                        f'installed: pip install {package}')


def _schedulers(cfg) -> list:
    """``(where, entry)`` of each parameter scheduler: ``param_scheduler`` is one, a
    list, or lists by optimizer name."""
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers] if 'type' in schedulers else [
            s for group in schedulers.values()
            for s in (group if isinstance(group, (list, tuple)) else [group])]
    return [('param_scheduler' + (f'[{i}]' if len(schedulers) > 1 else ''), scheduler)
            for i, scheduler in enumerate(schedulers)]


def _check_clip_grad(clip) -> None:
    """``optim_wrapper.clip_grad`` against the function mmengine's wrapper calls with
    it (``clip_grad_norm_``, or ``clip_grad_value_`` for ``type='value'``): a typo
    (``max_nrom``) was a TypeError at the first step."""
    from torch.nn.utils import clip_grad_norm_, clip_grad_value_
    if not isinstance(clip, dict):
        return
    kind = clip.get('type', 'norm')
    functions = dict(norm=clip_grad_norm_, value=clip_grad_value_)
    if kind not in functions:
        raise UserError(f"optim_wrapper.clip_grad: type {kind!r} is 'norm' "
                        "(clip_grad_norm_, the default) or 'value' (clip_grad_value_)")
    check_config_keys(clip, functions[kind], 'optim_wrapper.clip_grad', missing_too=True)


def _check_optimizer(cfg) -> None:
    """The optimizer wrapper (with the default constructor: a custom one reads keys of
    its own), its optimizer and the parameter schedulers."""
    from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
    from mmengine.optim.scheduler.momentum_scheduler import MomentumSchedulerMixin

    from mmsora.registry import OPTIM_WRAPPERS, OPTIMIZERS, PARAM_SCHEDULERS
    wrapper = cfg.get('optim_wrapper')
    if isinstance(wrapper, dict) and wrapper.get('constructor') in (
            None, 'DefaultOptimWrapperConstructor'):
        cls = registered_class(wrapper, OPTIM_WRAPPERS, 'optim_wrapper', default='OptimWrapper')
        optimizer = wrapper.get('optimizer')
        optimizer_cls = registered_class(optimizer, OPTIMIZERS, 'optim_wrapper.optimizer')
        if 'accumulative_counts' in wrapper:  # (its own words first, as train_cfg's counts)
            from mmsora.engine.strategies.train_options import check_accumulative_counts
            check_accumulative_counts(wrapper['accumulative_counts'])
        if cls is not None:  # (optim_wrapper.lr: named as the optimizer's)
            check_config_keys(wrapper, cls, 'optim_wrapper',
                              also=('constructor', 'paramwise_cfg'),
                              parts=dict(optimizer=optimizer_cls))
        _check_clip_grad(wrapper.get('clip_grad'))
        if optimizer_cls is not None:
            check_config_keys(optimizer, optimizer_cls, 'optim_wrapper.optimizer',
                              given_by_runner=('params',))
    for where, scheduler in _schedulers(cfg):
        cls = registered_class(scheduler, PARAM_SCHEDULERS, where)
        if inspect.isclass(cls):
            # LR / momentum schedulers give their base its param_name themselves
            mixin = issubclass(cls, (LRSchedulerMixin, MomentumSchedulerMixin))
            check_config_keys(scheduler, cls, where,
                              given_by_runner=('optimizer',) + (('param_name',) if mixin
                                                                 else ()),
                              also=('convert_to_iter_based',))


def _check_priority(priority, where: str) -> None:
    """A hook's ``priority``: a name of mmengine's ``Priority`` or 0..100 (a typo was
    a KeyError traceback when the Runner registered the hook)."""
    from mmengine.runner import Priority
    if isinstance(priority, bool) or not isinstance(priority, (int, str, Priority)):
        ok = False
    elif isinstance(priority, int):
        ok = 0 <= priority <= 100
    else:
        ok = isinstance(priority, Priority) or priority.upper() in Priority.__members__
    if not ok:
        names = list(Priority.__members__)
        close = difflib.get_close_matches(str(priority).upper(), names, n=1)
        raise UserError(f'{where}: priority {priority!r} is none of mmengine\'s ('
                        f'{", ".join(names)}, or 0 to 100)'
                        + (f'; did you mean {close[0]}?' if close else ''))


def _check_hooks(cfg) -> None:
    """Default and custom hooks. mmengine's hooks take ``**kwargs`` for someone else:
    the checkpoint hook's go to ``runner.save_checkpoint``, which takes none more (a
    typo failed at the first save); an EMA hook's build its average (``momentum``)."""
    from mmengine.hooks import CheckpointHook, EMAHook

    from mmsora.registry import HOOKS, MODELS
    hooks = [(f'default_hooks.{name}', hook)
             for name, hook in (cfg.get('default_hooks') or {}).items()]
    custom = cfg.get('custom_hooks') or []
    hooks += [(f'custom_hooks[{i}]', hook) for i, hook in enumerate(custom)]
    names = list((cfg.get('default_hooks') or {}))
    for where, hook in hooks:
        if isinstance(hook, dict) and 'type' not in hook:  # a name no base gives a type
            name = where.split('.', 1)[1] if where.startswith('default_hooks.') else None
            close = difflib.get_close_matches(name or '', [n for n in names if n != name],
                                              n=1)
            if name is None:  # a custom hook
                raise UserError(f"{where}: no type; give it, e.g. dict(type='EMAHook', "
                                '...)')
            raise UserError(f'{where}: no type (not one of the default hooks that '
                            'configs/_base_/default_runtime.py gives)'
                            + (f'; did you mean default_hooks.{close[0]}?' if close else
                               "; give its type, e.g. dict(type='CheckpointHook', ...)"))
        if isinstance(hook, dict) and 'priority' in hook:
            _check_priority(hook['priority'], where)
        cls = registered_class(hook, HOOKS, where)
        if not inspect.isclass(cls):
            continue
        extra = None
        if issubclass(cls, EMAHook):
            momentum = hook.get('momentum')
            if momentum is not None and (isinstance(momentum, bool) or not isinstance(
                    momentum, (int, float)) or not 0 < momentum < 1):
                # (mmengine's assertion, a traceback, when the hook built its average)
                raise UserError(f'{where}.momentum={momentum!r}: the EMA moves that '
                                'fraction of the way to the weights each step, in (0, 1); '
                                "DiT's decay 0.9999 is momentum=1e-4")
            if momentum is not None and momentum > 0.5:  # a decay (DiT's, SiT's, Latte's
                # ema 0.9999) given as mmengine's momentum: the "EMA" was the weights of
                # the last step or two, which checkpoints and infer sampled, without a word
                raise UserError(f'{where}.momentum={momentum!r} moves the EMA '
                                f'{momentum * 100:g}% of the way to the weights each step: '
                                "it follows them and averages nothing. mmengine's momentum "
                                f'is 1 - decay: for a decay of {momentum:g} give momentum='
                                f'{1 - momentum:.4g}')
            ema_type = hook.get('ema_type', inspect.signature(cls).parameters[
                'ema_type'].default)
            try:
                average = registered_class(dict(type=ema_type), MODELS, f'{where}.ema_type')
            except UserError:  # an average the hook builds itself (ShardedEMAHook's)
                continue
            if average is None:
                continue
            extra, complete = accepted_arguments(average)
            if not complete:
                continue
            extra.pop('model', None)
        check_config_keys(hook, cls, where, also=('priority',), extra=extra,
                          past_kwargs=issubclass(cls, CheckpointHook))


# The parts a LatentDiffusion builds from its config, and the registry of each
_MODEL_PARTS = (('denoiser', 'MODELS'), ('diffusion', 'DIFFUSION'), ('vae', 'MODELS'),
                ('text_encoder', 'MODELS'), ('data_preprocessor', 'MODELS'))


def check_model_config(model, where: str = 'model', types: bool = True) -> None:
    """A ``model`` config against its class, and a ``LatentDiffusion``'s parts
    (``model.denoiser``, ``model.diffusion``, ``model.vae``, ...) against theirs: an
    unknown type (unless not ``types``: then the entry is left to the model's build,
    which names it) or key and a value plainly of the wrong type
    (:func:`check_config_values`), one line naming the entry as the config has it
    (``model.denoiser: unknown config key 'hiden_size' for DiT; ...``,
    ``model.denoiser.depth must be a whole number (int), got 'three' (a str)``).
    Nothing is built. tools/train.py builds the model on the meta device before
    :func:`check_training_keys`; that build's own messages name no entry, and a value
    of the wrong type was no message there (range('three'): a TypeError, left to the
    Runner), so it is met here."""
    if not isinstance(model, dict):
        return
    import mmsora.registry as registries
    from mmsora.models.latent_diffusion import LatentDiffusion

    def class_of(entry, registry, at):
        try:
            return registered_class(entry, registry, at)
        except UserError:
            if types:
                raise
            return None

    cls = class_of(model, registries.MODELS, where)
    if not inspect.isclass(cls):
        return
    parts = {key: class_of(model.get(key), getattr(registries, registry), f'{where}.{key}')
             for key, registry in _MODEL_PARTS} if issubclass(cls, LatentDiffusion) else {}
    check_config_keys(model, cls, where, parts=parts)  # (model.depth: the denoiser's)
    for key, found in parts.items():
        if inspect.isclass(found):
            check_config_keys(model[key], found, f'{where}.{key}')


def text_conditioned_config(model) -> bool:
    """Whether a ``model`` config's denoiser reads text (``condition='text'`` in the
    config, or as its class has it: StableCascadeVideo), from the config alone."""
    denoiser = (model or {}).get('denoiser') or {}
    if not isinstance(denoiser, dict):
        return False
    cls = denoiser_class(model)
    return denoiser.get('condition', getattr(cls, 'condition', None)) == 'text'


def _model_class(entry):
    """The class a ``MODELS`` config ``entry`` names: its ``type`` looked up in the
    registry (``'DiT'``, or scoped, ``'mmsora.DiT'``, as ``MODELS.build`` takes it), or
    the class given; None where it does not say or is not found."""
    kind = entry.get('type') if isinstance(entry, dict) else None
    try:
        from mmsora.registry import MODELS
        return MODELS.get(kind) if isinstance(kind, str) else kind
    except Exception:
        return None


def model_setting(model, key: str):
    """What the build of a ``model`` config takes for ``key``: the config's value, else
    the default of its class's constructor (:func:`_model_class`: a registered name,
    scoped or not, or the class given; a subclass's ``**kwargs`` followed to its bases),
    as LatentDiffusion's ``latent_shape`` (4, 32, 32) for a config that gives none. A
    KeyError where neither says (the class not found, an argument without default)."""
    if isinstance(model, dict) and key in model:
        return model[key]
    cls = _model_class(model)
    for klass in cls.__mro__[:-1] if inspect.isclass(cls) else ():  # (not object's)
        init = klass.__dict__.get('__init__')
        if init is None:
            continue
        params = _signature(init).parameters
        param = params.get(key)
        if param is not None and param.kind not in (param.VAR_POSITIONAL,
                                                    param.VAR_KEYWORD):
            if param.default is param.empty:
                break
            return param.default
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break  # (the key goes nowhere further)
    raise KeyError(key)


def denoiser_class(model):
    """The class a ``model`` config's denoiser names (:func:`_model_class`: a
    registered name, scoped or not, or the class given), or None where it does not say
    or is not found."""
    return _model_class(model.get('denoiser') if isinstance(model, dict) else None)


def check_guidance(cfg) -> None:
    """A sampling hook (samples or an evaluation during training) or the config's
    ``evaluation`` section (what tools/test.py scores the run with) that guides
    (``cfg_scale`` other than 1, its own or the config's ``sample_cfg``'s) a denoiser
    without ``forward_with_cfg`` (one's own): the run stopped at the hook, ``interval``
    iterations in, and the message pointed at an option train.py does not have;
    tools/test.py stopped at its first batch, once the weights had loaded (the
    section's sampler settings were judged, its guidance not). The scales are numbers
    here: :func:`_check_sample_cfg`, called first, judged them (every model's)."""
    from mmsora.diffusion.scheduler_sampling import merge_sample_cfg
    from mmsora.engine.hooks import SampleEvaluationHook, SampleVisualizationHook
    from mmsora.registry import HOOKS
    cls = denoiser_class(cfg.get('model'))
    if not isinstance(cls, type) or hasattr(cls, 'forward_with_cfg'):
        return
    base = cfg.get('sample_cfg') if isinstance(cfg.get('sample_cfg'), dict) else {}
    samplers = []  # (what samples, in words; its entry; its key in the config)
    for i, hook in enumerate(cfg.get('custom_hooks') or []):
        # (the hook as HOOKS.build finds it: a scoped name, the class, a subclass; the
        # exact names alone were read, and 'mmsora.SampleVisualizationHook' passed)
        kind = registered_class(hook, HOOKS, f'custom_hooks[{i}]')
        if inspect.isclass(kind) and issubclass(
                kind, (SampleVisualizationHook, SampleEvaluationHook)):
            samplers.append((f'custom_hooks[{i}] ({kind.__name__})', hook,
                             f'custom_hooks[{i}]'))
    evaluation = cfg.get('evaluation')
    if isinstance(evaluation, dict) and evaluation:
        samplers.append(('evaluation (tools/test.py)', evaluation, 'evaluation'))
    for what, entry, key in samplers:
        own = entry.get('sample_cfg') if isinstance(entry.get('sample_cfg'), dict) else {}
        where = f'{key}.sample_cfg.cfg_scale' if 'cfg_scale' in own else 'sample_cfg.cfg_scale'
        check_denoiser_guides(cfg.get('model'), merge_sample_cfg(base, own).get('cfg_scale', 1.0),
                              what, where, f'set {where}=1')


def check_denoiser_guides(model, scale, what: str, where: str, fix: str) -> None:
    """Refuse guidance (``scale`` other than 1, given as ``where``) for the denoiser of
    a ``model`` config without ``forward_with_cfg`` (one's own), in one line: ``what``
    samples so, ``fix`` says how not to. A denoiser not found, and a scale that is no
    number (sampling's to refuse: '4' has no format 'g'), are left alone. The one
    check of training's sampling hooks and evaluation section (:func:`check_guidance`),
    tools/test.py's evaluation and tools/infer.py's settings, before the weights load."""
    cls = denoiser_class(model)
    if (not isinstance(cls, type) or hasattr(cls, 'forward_with_cfg')
            or not isinstance(scale, numbers.Real) or scale == 1.0):
        return
    raise UserError(f'{what} samples with guidance ({where}={scale:g}) but model.denoiser '
                    f'{cls.__name__} has no forward_with_cfg: {fix}, or add forward_with_cfg '
                    'as DiT has it (README, "Your own modules")')


def _check_sample_cfg(cfg) -> None:
    """``sample_cfg`` (and a hook's or the evaluation's own over it) against the
    model's objective: a sampler name or option typo failed when the samples were
    first drawn, a sampling hook's interval into the run (and the run with it), or at
    ``tools/infer.py``. The sampler of a model config whose objective does not build is
    left to the model. ``cfg_scale`` and ``precision`` are judged for every model by
    sampling's own rule, in ``check_sample_settings`` with the rest (None or '4'
    stopped the run at a sampling hook's first samples, or was a TypeError of the
    guidance check's own message), the scale's message naming the key in full."""
    from mmsora.diffusion.scheduler_sampling import check_sample_cfg_dict, merge_sample_cfg
    evaluation = cfg.get('evaluation')
    given = [('sample_cfg', cfg.get('sample_cfg'))] + [
        (f'custom_hooks[{i}].sample_cfg', hook.get('sample_cfg'))
        for i, hook in enumerate(cfg.get('custom_hooks') or []) if isinstance(hook, dict)]
    if isinstance(evaluation, dict):
        given.append(('evaluation.sample_cfg', evaluation.get('sample_cfg')))
    for where, value in given:  # (not a dict: a sampling hook's first samples, else)
        try:
            check_sample_cfg_dict(value, where)
        except ValueError as e:
            raise UserError(str(e)) from None
    base = cfg.get('sample_cfg')
    base = dict(base) if isinstance(base, dict) else {}
    entries = [('sample_cfg', base)] if base else []
    for i, hook in enumerate(cfg.get('custom_hooks') or []):
        if isinstance(hook, dict) and isinstance(hook.get('sample_cfg'), dict):
            entries.append((f'custom_hooks[{i}].sample_cfg',
                            merge_sample_cfg(base, hook['sample_cfg'])))
    if isinstance(evaluation, dict) and isinstance(evaluation.get('sample_cfg'), dict):
        entries.append(('evaluation.sample_cfg', merge_sample_cfg(base, evaluation['sample_cfg'])))
    for where, settings in entries:
        try:
            check_sample_settings_of(cfg.get('model'), settings)
        except ValueError as e:
            # ('cfg_scale must be ...', sampling's rule: the key, named in full)
            joint = '.' if str(e).startswith('cfg_scale must be ') else ': '
            raise UserError(f'{where}{joint}{e}') from None


def check_sample_settings_of(model, settings: dict) -> None:
    """Sampling ``settings`` (a ``sample_cfg``) against a ``LatentDiffusion`` config's
    objective, which alone is built (it holds no weights); a one-line ValueError. The
    model is a LatentDiffusion as ``MODELS.build`` finds it (:func:`_model_class`: a
    scoped ``'mmsora.LatentDiffusion'``, the class itself, a subclass; the exact name
    alone was judged, and a scoped one's sampler='ddmi' or cfg_scale='4' passed).

    ``precision`` and ``cfg_scale``, which need no objective, are judged for every
    model config, one whose objective does not build or of another class too: sampling
    judges them so (``LatentDiffusion.sample``; ``sample_images`` and the hooks for a
    model without an objective, ``check_run_sample_settings``)."""
    from mmsora.diffusion.scheduler_sampling import (check_not_caller_passed,
                                                     check_sample_settings,
                                                     sample_settings_of)
    from mmsora.models.latent_diffusion import LatentDiffusion
    from mmsora.registry import DIFFUSION
    cls = _model_class(model)
    if not (inspect.isclass(cls) and issubclass(cls, LatentDiffusion)):
        cls, diffusion = LatentDiffusion, None  # (None: precision and cfg_scale alone)
    else:
        try:
            diffusion = DIFFUSION.build(model.get('diffusion', dict(type='GaussianDiffusion')))
        except Exception:  # (the model's build says why)
            diffusion = None
    # its sample's settings; not what the hooks and tools pass themselves
    # (a sample_cfg.progress or seeds met the same keyword twice: a TypeError)
    check_sample_settings(diffusion, settings, sample_settings_of(cls.sample))
    check_not_caller_passed(settings)  # (seeds: a setting's name to the objective's check)


def check_training_keys(cfg, check_model: bool = True) -> None:
    """Every entry of a training config that the Runner builds from a registry — the
    loop (``train_cfg``), the training loader's dataset, sampler and ``collate_fn``,
    the optimizer wrapper and its optimizer, the parameter schedulers, the default and
    custom hooks — checked against its class: an unknown type, an unknown key (a typo)
    or, for the dataset, a missing argument is one line; a value plainly of the
    wrong type too (:func:`check_config_values`); the model and its parts the same way
    (:func:`check_model_config`, an unknown type left to the model's build, which
    names it), unless not ``check_model``: the caller checked it already
    (``tools/train.py``, unknown types too, before its build on the meta device; it
    ran twice a start); ``sample_cfg`` against the model's objective (which alone is
    built: it holds no weights). An mmcv 1.x section the Runner would not read
    (``optimizer``, ``lr_config``, ...) is refused first, naming its place now.
    Nothing is read."""
    _check_mmcv1_sections(cfg)
    _note_top_level(cfg)
    _check_sections(cfg)
    if check_model:
        check_model_config(cfg.get('model'), types=False)  # (the model's build names them)
    loop = _check_train_loop(cfg)
    _check_runtime(cfg)
    _check_loader(cfg)
    _check_optimizer(cfg)
    _check_hooks(cfg)
    _check_visualizer(cfg)
    _check_sample_cfg(cfg)
    check_guidance(cfg)
    _check_iteration_based(cfg, loop)
