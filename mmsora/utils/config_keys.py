"""A training config's entries against the classes they build, before the Runner starts.

mmengine's Runner builds the loop, the dataset, the optimizer wrapper, the parameter
schedulers and the hooks only after printing the environment and the whole config and
making the work dir; a typo in one of them (``weight_decy``, ``star_factor``,
``momentm``, ``type='CosineAnealingLR'``) then stopped the run there, or, for keys
mmengine hands on (a hook's ``**kwargs``), at the first use. ``check_training_keys``
reads every such entry against its class's signature at once: nothing is built or
read. ``tools/train.py`` calls it before the strategy presets rewrite the config, so
that the names in its messages are the ones the user wrote.
"""
import inspect
from typing import Optional

from mmsora.utils.cli import (UserError, missing_arguments_message, unknown_key_message,
                              unknown_type_message)

__all__ = ['accepted_arguments', 'check_config_keys', 'check_training_keys',
           'registered_class']


def _forwarding_bases() -> tuple:
    """Classes known to hand their ``**kwargs`` on to their bases' ``__init__``:
    mmengine's optimizer wrappers, parameter schedulers (through the LR / momentum
    mixins), averaged models (our float32 EMA) and EMA hooks (ours to mmengine's,
    whose own ``**kwargs`` build the average). Elsewhere ``**kwargs`` may go anywhere
    (torch's ZeroRedundancyOptimizer hands them to the optimizer it builds)."""
    from mmengine.hooks import EMAHook
    from mmengine.model.averaged_model import BaseAveragedModel
    from mmengine.optim import OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
    return OptimWrapper, _ParamScheduler, BaseAveragedModel, EMAHook


def accepted_arguments(cls):
    """``(names, complete)``: the arguments ``cls`` takes by name, and whether that is
    all of them. A class of :func:`_forwarding_bases` whose ``__init__`` takes
    ``**kwargs`` takes its bases' arguments too, collected along the method
    resolution order until an ``__init__`` without ``**kwargs``; any other class with
    ``**kwargs`` is not complete, nor is one whose ``**kwargs`` go past every base
    (mmengine's EMA hook builds its average with them). A function (a
    ``collate_fn``) takes its arguments after the first (the batch)."""
    def named(params):
        return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def takes_any(params):
        return any(p.kind == p.VAR_KEYWORD for p in params)

    if not inspect.isclass(cls):
        params = list(inspect.signature(cls).parameters.values())[1:]
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
            params = list(inspect.signature(cls).parameters.values())  # (__new__'s,
            return named(params), not takes_any(params)  # or none at all)
        passed_on = True
        params = list(inspect.signature(init).parameters.values())[1:]  # after self
        for name, p in named(params).items():
            found.setdefault(name, p)
        if not takes_any(params):
            return found, True
        if not follow:
            return found, False
    return found, False


def check_config_keys(entry: dict, cls, where: str, given_by_runner=(), also=(),
                      missing_too: bool = False, past_kwargs: bool = False,
                      extra: Optional[dict] = None) -> None:
    """Refuse keys of a config ``entry`` that ``cls`` does not take (a typo), naming
    the close ones; with ``missing_too`` also the arguments it needs and the entry
    lacks. ``given_by_runner``: arguments the Runner passes itself (not the config's);
    ``also``: keys the Runner reads beside them (a hook's ``priority``); ``extra``:
    more arguments taken, by name (an EMA hook's average's). mmengine's own keys
    (``type``, ``_scope_``) are skipped; so is a class that takes any keyword
    (:func:`accepted_arguments`), unless ``past_kwargs`` (nothing takes them further)."""
    params, complete = accepted_arguments(cls)
    if extra:
        params = {**params, **extra}
        complete = True
    params = {name: p for name, p in params.items() if name not in given_by_runner}
    if not (complete or past_kwargs):
        return
    keys = [key for key in entry if key not in ('type', '_scope_', *also)]
    name = getattr(cls, '__name__', str(cls))
    for key in keys:
        if key not in params:
            raise UserError(f'{where}: ' + unknown_key_message(
                name, key, skip=given_by_runner, names=list(params)))
    if not missing_too:
        return
    missing = [name for name, p in params.items() if p.default is p.empty and name not in keys]
    if missing:
        raise UserError(f'{where}: {missing_arguments_message(name, missing)}')


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
            import mmengine._strategy  # noqa: F401  (when the strategies are imported)
            found = registry.get(kind)
    except Exception:  # a dotted name that does not import: the Runner says it
        return None
    if found is None:
        raise UserError(f'{where}: {unknown_type_message(kind, registry.name)}')
    return found


def _check_train_loop(cfg) -> None:
    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

    from mmsora.registry import LOOPS
    loop = dict(cfg.get('train_cfg') or {})
    if 'type' in loop:
        cls = registered_class(loop, LOOPS, 'train_cfg')
        if cls is None:
            return
    else:
        cls = EpochBasedTrainLoop if loop.pop('by_epoch', False) else IterBasedTrainLoop
    check_config_keys(loop, cls, 'train_cfg', given_by_runner=('runner', 'dataloader'))


def _check_loader(cfg) -> None:
    from mmsora.registry import DATA_SAMPLERS, DATASETS, FUNCTIONS
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
        if cls is not None:
            check_config_keys(wrapper, cls, 'optim_wrapper',
                              also=('constructor', 'paramwise_cfg'))
        optimizer = wrapper.get('optimizer')
        cls = registered_class(optimizer, OPTIMIZERS, 'optim_wrapper.optimizer')
        if cls is not None:
            check_config_keys(optimizer, cls, 'optim_wrapper.optimizer',
                              given_by_runner=('params',))
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):  # one scheduler, or lists by optimizer name
        schedulers = [schedulers] if 'type' in schedulers else [
            s for group in schedulers.values()
            for s in (group if isinstance(group, (list, tuple)) else [group])]
    for i, scheduler in enumerate(schedulers):
        where = 'param_scheduler' + (f'[{i}]' if len(schedulers) > 1 else '')
        cls = registered_class(scheduler, PARAM_SCHEDULERS, where)
        if inspect.isclass(cls):
            # LR / momentum schedulers give their base its param_name themselves
            mixin = issubclass(cls, (LRSchedulerMixin, MomentumSchedulerMixin))
            check_config_keys(scheduler, cls, where,
                              given_by_runner=('optimizer',) + (('param_name',) if mixin
                                                                 else ()),
                              also=('convert_to_iter_based',))


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
    for where, hook in hooks:
        cls = registered_class(hook, HOOKS, where)
        if not inspect.isclass(cls):
            continue
        extra = None
        if issubclass(cls, EMAHook):
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


def check_training_keys(cfg) -> None:
    """Every entry of a training config that the Runner builds from a registry — the
    loop (``train_cfg``), the training loader's dataset, sampler and ``collate_fn``,
    the optimizer wrapper and its optimizer, the parameter schedulers, the default and
    custom hooks — checked against its class: an unknown type, an unknown key (a typo)
    or, for the dataset, a missing argument is one line. Nothing is built or read."""
    _check_train_loop(cfg)
    _check_loader(cfg)
    _check_optimizer(cfg)
    _check_hooks(cfg)
