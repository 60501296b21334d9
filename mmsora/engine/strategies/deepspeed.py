"""DeepSpeed ZeRO through mmengine's FlexibleRunner and DeepSpeedStrategy.

Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", SC 2020. The presets in ``configs/_base_/strategies/deepspeed_*.py`` carry
xtuner's names and contents (zero1, zero2, zero2_offload, zero3, zero3_offload) with
``'auto'`` where the value belongs to the training config; :func:`fill_auto` fills them
the way xtuner's ``train.py --deepspeed`` and Hugging Face's DeepSpeed integration do.

Mend for mmengine 0.10.7: ``DeepSpeedStrategy.__init__`` calls
``register_deepspeed_optimizers``, which imports ``deepspeed.runtime.fp16.onebit``
(removed in DeepSpeed 0.17) and registers with ``force=False`` (a second strategy in
the same process raises "already registered"). :func:`mend_mmengine_deepspeed`
replaces it with one that registers the optimizers the installed DeepSpeed has, and
makes ``save_checkpoint`` run the hooks' checkpoint callback, which it drops (so the
EMA weights are saved), fail on every process at once where one process's write
fails and replace a checkpoint there before only once the new one is whole
(:func:`~mmsora.engine.strategies.deepspeed_save.fail_together`). It also hides torch's deprecation of the collectives
DeepSpeed calls, which came back at every step (:func:`quiet_deprecated_collectives`).
"""
import copy
import json
import os
import os.path as osp
import sys
import warnings
from functools import partial

from mmengine.hooks import Hook

import mmsora
from mmsora.engine.strategies.deepspeed_save import fail_together
from mmsora.registry import HOOKS
from mmsora.utils.cli import UserError
from mmsora.utils.training_inputs import hook_class
from mmsora.utils.zero_checkpoint import is_zero_checkpoint, zero_model_states  # noqa: F401

__all__ = ['DEEPSPEED_PRESETS', 'ResumeHooksHook', 'is_zero_checkpoint', 'preset_path',
           'preset_names', 'zero_model_states', 'partitions_weights',
           'load_strategy', 'read_deepspeed_json', 'fill_auto', 'mend_mmengine_deepspeed',
           'quiet_deprecated_collectives', 'to_flexible_runner_config']

DEEPSPEED_PRESETS = ('deepspeed_zero1', 'deepspeed_zero2', 'deepspeed_zero2_offload',
                     'deepspeed_zero3', 'deepspeed_zero3_offload')
STRATEGY_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(mmsora.__file__))),
                        'configs', '_base_', 'strategies')


def preset_path(name: str, kind: str = '') -> str:
    """The file of a strategy: a preset name (``deepspeed_zero2``, ``fsdp``) or a path
    to a ``.py`` config holding ``strategy = dict(...)``; an unknown name is refused
    with the presets whose names start with ``kind`` (``'deepspeed'``, ``'fsdp'``).
    (A DeepSpeed ``.json`` file is read by :func:`load_strategy` instead.)"""
    if osp.isfile(name):
        return name
    path = osp.join(STRATEGY_DIR, f'{name}.py')
    if not osp.isfile(path):
        raise UserError(f'unknown {kind + " " if kind else ""}strategy {name!r}: give a '
                        f'file or one of {preset_names(kind)}')
    return path


def preset_names(kind: str = '') -> list:
    """The presets in ``configs/_base_/strategies`` whose names start with ``kind``."""
    return sorted(osp.splitext(f)[0] for f in os.listdir(STRATEGY_DIR)
                  if f.endswith('.py') and f.startswith(kind)) \
        if osp.isdir(STRATEGY_DIR) else []


def load_strategy(name: str, options=(), kind: str = '') -> dict:
    """The ``strategy`` dict of a preset name or a config file, with ``options``
    (``--cfg-options`` entries; those under ``strategy.`` apply to it, e.g.
    ``strategy.model_wrapper.mixed_precision.param_dtype=bfloat16``) set on it.

    A ``.json`` file is a DeepSpeed config (DeepSpeed's, Hugging Face's or xtuner's
    files): a ``DeepSpeedStrategy`` with that config (:func:`read_deepspeed_json`)."""
    from mmengine.config import Config

    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    if name.lower().endswith('.json'):
        if kind == 'fsdp':  # (it was taken for a DeepSpeed config, then refused as 'not
            # an FSDPStrategy preset')
            raise UserError(f'--fsdp {name}: FSDP takes a preset name '
                            f'({", ".join(preset_names("fsdp"))}) or a .py file holding '
                            f'strategy = dict(type=\'FSDPStrategy\', ...); a JSON file is a '
                            f'DeepSpeed config: --deepspeed {name}')
        flag = f'--{kind or "deepspeed"} {name}'
        cfg = Config(dict(strategy=dict(type='DeepSpeedStrategy',
                                        config=read_deepspeed_json(name, flag))))
    else:
        cfg = load_config(preset_path(name, kind))
    if 'strategy' not in cfg:
        raise UserError(f'{name}: the file has no `strategy = dict(...)`')
    apply_cfg_options(cfg, _strategy_options(options))
    return cfg.strategy.to_dict()


def read_deepspeed_json(path: str, given: str) -> dict:
    """The DeepSpeed JSON config file ``path`` as a dict, its ``'auto'`` values kept
    (:func:`fill_auto` fills them, as a preset's). mmengine's ``DeepSpeedStrategy``
    takes such a path as its ``config``, but every reader before it (the ZeRO check,
    the accumulation, the memory estimate, ``fill_auto``) needs the dict.

    Args:
        path (str): The file.
        given (str): How the user gave it (``'strategy.config=PATH'``,
            ``'--deepspeed PATH'``), for the refusals.

    Raises:
        UserError: a file that cannot be read, is not JSON or not a JSON object.
    """
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except FileNotFoundError:
        raise UserError(f'{given}: no such file; give the path of a DeepSpeed JSON '
                        'config') from None
    except OSError as e:
        raise UserError(f'{given}: cannot read it ({e.strerror}); give the path of a '
                        'DeepSpeed JSON config') from None
    except UnicodeDecodeError:
        raise UserError(f'{given}: not a text file; give a DeepSpeed JSON config') \
            from None
    except json.JSONDecodeError as e:
        raise UserError(f'{given}: not valid JSON ({e}); fix the file') from None
    if not isinstance(config, dict):
        raise UserError(f'{given}: a DeepSpeed config is a JSON object ({{...}}), the '
                        f'file holds a {type(config).__name__}')
    return config


def check_zero_settings(strategy: dict) -> None:
    """Refuse a key of ``config.zero_optimization`` that DeepSpeed's ZeRO config does
    not have (a typo: ``reduce_bucket_sise``), naming it with the close ones. Training
    failed at DeepSpeed's start with pydantic's last line only; the memory estimate
    took the default in its place without a word."""
    zero = ((strategy.get('config') or {}).get('zero_optimization') or {})
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
    except ImportError:  # training needs DeepSpeed anyway and says so
        return
    fields = (getattr(DeepSpeedZeroConfig, 'model_fields', None)  # pydantic 2
              or getattr(DeepSpeedZeroConfig, '__fields__', {}))  # 1 (DeepSpeed < 0.15)
    names = {name for key, field in fields.items()
             for name in (key, getattr(field, 'alias', None)) if name}
    if not names:
        return
    for key in zero:
        if key not in names:
            import difflib
            close = difflib.get_close_matches(key, sorted(names), n=3)
            raise UserError(f'strategy.config.zero_optimization.{key}: not a DeepSpeed '
                            'ZeRO setting' + (f'; did you mean {", ".join(close)}?'
                                              if close else ''))


def _strategy_options(options) -> list:
    """The ``--cfg-options`` entries that set the strategy (``strategy.KEY=VALUE``):
    ``--deepspeed`` / ``--fsdp`` put them on the preset they load."""
    return [o for o in options if o.startswith('strategy.')]


def _clip_max_norm(optim_wrapper: dict) -> float:
    clip = optim_wrapper.get('clip_grad')
    if not clip:
        return 0.0  # DeepSpeed: 0 means no clipping, as the config says
    if clip.get('type', 'norm') != 'norm':
        raise UserError("DeepSpeed clips by global norm only; the config's "
                        f"optim_wrapper.clip_grad is {dict(clip)}")
    return float(clip['max_norm'])


def fill_auto(ds_config: dict, cfg, amp_dtype=None, world_size=None) -> dict:
    """A DeepSpeed config with its ``'auto'`` values taken from the training config,
    the ones Hugging Face's DeepSpeed integration fills (xtuner fills the first five):

    - ``train_micro_batch_size_per_gpu``: ``train_dataloader.batch_size``;
    - ``gradient_accumulation_steps``: ``optim_wrapper.accumulative_counts``;
    - ``gradient_clipping``: ``optim_wrapper.clip_grad.max_norm`` (0: none);
    - ``fp16.enabled`` / ``bf16.enabled``: ``amp_dtype``;
    - ``train_batch_size``: dropped (DeepSpeed takes it as the micro-batch x
      accumulation x processes);
    - ``zero_optimization.reduce_bucket_size`` (hidden x hidden),
      ``stage3_prefetch_bucket_size`` (0.9 x hidden x hidden) and
      ``stage3_param_persistence_threshold`` (10 x hidden): from
      ``model.denoiser.hidden_size``.

    Args:
        ds_config (dict): DeepSpeed JSON config (a preset's ``strategy.config``).
        cfg (Config): The training config.
        amp_dtype (str, optional): ``'bfloat16'`` / ``'float16'`` to train in that
            precision (``--amp``), None for fp32.
        world_size (int, optional): The run's processes: a ``train_batch_size`` number
            is checked against them (None: not checked).

    Returns:
        dict: A copy with every ``'auto'`` replaced.

    Raises:
        UserError: an ``optimizer`` or ``scheduler`` section (Hugging Face's files):
            DeepSpeed would ignore the former (the config's optimizer is handed to it)
            and run the latter next to the config's ``param_scheduler``; a
            ``train_batch_size`` that is not the micro-batch x accumulation x
            processes (DeepSpeed failed on its assertion); an ``'auto'`` left.
    """
    ds = copy.deepcopy(ds_config)
    if amp_dtype not in (None, 'bfloat16', 'float16'):
        raise UserError(f"amp dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}")
    for key, ours in (('optimizer', 'optim_wrapper.optimizer'),
                      ('scheduler', 'param_scheduler')):
        if key in ds:
            raise UserError(f'strategy.config.{key}: the training config\'s {ours} is '
                            f'the run\'s (DeepSpeed would ignore or double it); drop '
                            f'"{key}" from the DeepSpeed config')
    if ds.get('train_batch_size') == 'auto':
        del ds['train_batch_size']
    wrapper = cfg.optim_wrapper
    auto = dict(
        train_micro_batch_size_per_gpu=(cfg.train_dataloader.batch_size,
                                        'train_dataloader.batch_size'),
        gradient_accumulation_steps=(wrapper.get('accumulative_counts', 1),
                                     'optim_wrapper.accumulative_counts'),
        gradient_clipping=(_clip_max_norm(wrapper), None))
    source = {}  # where the batch numbers come from, for the train_batch_size check
    for key, (value, setting) in auto.items():
        source[key] = f'strategy.config.{key}'
        if ds.get(key, 'auto') == 'auto':
            ds[key], source[key] = value, setting
    for key, dtype in (('fp16', 'float16'), ('bf16', 'bfloat16')):
        section = ds.setdefault(key, {})
        if section.get('enabled', 'auto') == 'auto':
            section['enabled'] = amp_dtype == dtype
    if world_size is not None:
        _check_train_batch_size(ds, source, world_size)
    hidden = _fill_bucket_sizes(ds, cfg)
    left = list(_auto_keys(ds))
    if left:
        zero = [k for k in left if k.startswith('zero_optimization.')]
        why = (' (the ZeRO sizes are filled from model.denoiser.hidden_size, which the '
               'config does not give)' if zero and hidden is None else '')
        raise UserError(f'DeepSpeed config: no value for "auto" in {left}{why}; give '
                        f'{"it" if len(left) == 1 else "them"} a value in the DeepSpeed '
                        'config')
    return ds


def _check_train_batch_size(ds: dict, source: dict, world_size: int) -> None:
    """Refuse a ``train_batch_size`` number that is not the micro-batch x accumulation
    x processes: DeepSpeed failed at its start on its own assertion, naming none of
    the settings."""
    total = ds.get('train_batch_size')
    micro, steps = ds['train_micro_batch_size_per_gpu'], ds['gradient_accumulation_steps']
    numbers = (total, micro, steps)
    if total is None or not all(isinstance(n, (int, float)) and not isinstance(n, bool)
                                for n in numbers):
        return  # (DeepSpeed checks the types)
    product = micro * steps * world_size
    if total != product:
        raise UserError(
            f'strategy.config.train_batch_size={total} (the DeepSpeed config) is not the '
            f'samples per optimizer step, {micro} '
            f'({source["train_micro_batch_size_per_gpu"]}) x {steps} '
            f'({source["gradient_accumulation_steps"]}) x {world_size} process(es) = '
            f'{product}: set strategy.config.train_batch_size={product} or "auto", or '
            'drop it')


# Hugging Face's sizes from the model's hidden size for the ZeRO settings left 'auto'
# (transformers' integrations/deepspeed.py, trainer_config_finalize)
_HIDDEN_SIZE_SETTINGS = (('reduce_bucket_size', lambda h: h * h),
                         ('stage3_prefetch_bucket_size', lambda h: int(0.9 * h * h)),
                         ('stage3_param_persistence_threshold', lambda h: 10 * h))


def _fill_bucket_sizes(ds: dict, cfg):
    """Fill the ZeRO sizes left ``'auto'`` from ``model.denoiser.hidden_size`` (the
    config's, else its class's default: DiT's 1152); returns that hidden size (None:
    neither gives one, the sizes stay ``'auto'``)."""
    from mmsora.utils.config_keys import denoiser_class
    from mmsora.utils.trained_settings import keyword_defaults
    model = cfg.get('model') or {}
    denoiser = model.get('denoiser') or {}
    hidden = denoiser.get('hidden_size') if isinstance(denoiser, dict) else None
    if hidden is None:
        cls = denoiser_class(model)
        hidden = keyword_defaults(cls).get('hidden_size') if isinstance(cls, type) else None
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        return None
    zero = ds.get('zero_optimization')
    if isinstance(zero, dict):
        for key, size in _HIDDEN_SIZE_SETTINGS:
            if zero.get(key) == 'auto':
                zero[key] = size(hidden)
    return hidden


def _auto_keys(value, prefix=''):
    """The dotted keys (``zero_optimization.reduce_bucket_size``) of the ``'auto'``
    values in ``value``, at any depth."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        if value == 'auto':
            yield prefix
        return
    for key, item in items:
        yield from _auto_keys(item, f'{prefix}.{key}' if prefix else str(key))


def mend_mmengine_deepspeed():
    """Make mmengine 0.10.7's DeepSpeedStrategy work with current DeepSpeed (>= 0.17).

    Returns:
        list[str]: The DeepSpeed optimizers now in mmengine's ``OPTIMIZERS``.
    """
    import mmengine._strategy.deepspeed as mm_deepspeed

    from mmsora.engine.atomic_checkpoint import make_checkpoints_atomic
    mm_deepspeed.register_deepspeed_optimizers = register_deepspeed_optimizers
    make_checkpoints_atomic()  # its save_checkpoint, imported by name
    strategy = mm_deepspeed.DeepSpeedStrategy
    if not getattr(strategy, '_mmsora_hooks_mended', False):
        strategy.save_checkpoint = fail_together(
            _save_with_hooks(strategy.save_checkpoint))
        strategy.resume = _resume_with_hooks(strategy.resume)
        strategy._mmsora_hooks_mended = True
    quiet_deprecated_collectives()
    return register_deepspeed_optimizers()


# torch's FutureWarnings for the collectives DeepSpeed's ZeRO calls at every step
# (torch >= 2.5 deprecates them; DeepSpeed 0.19 still calls them).
_DEPRECATED_COLLECTIVES = (r'`torch\.distributed\.(all_gather_into_tensor|'
                           r'reduce_scatter_tensor)` is deprecated')


def quiet_deprecated_collectives() -> None:
    """Hide torch's deprecation of ``all_gather_into_tensor`` and
    ``reduce_scatter_tensor``, which DeepSpeed calls (nothing a user can change),
    and no other warning.

    Python's default shows a warning once per location, but its record is wiped
    whenever anything changes the warning filters, ``warnings.catch_warnings()``
    included (the 'once' action's record too). DeepSpeed does that at every step
    on the CPU: ZeRO's gradient reduction asks the CPU accelerator for its device
    count, which runs ``numactl`` in a subprocess, and ``subprocess`` enters
    ``catch_warnings``. So the same warnings came back at every step on every rank
    and flooded the log. A ``-W`` option or ``PYTHONWARNINGS`` the user gave is
    left to decide.
    """
    if sys.warnoptions:
        return
    # the module the warning is attributed to differs with torch's version (its
    # c10d logger wrapper, or DeepSpeed calling in)
    warnings.filterwarnings('ignore', _DEPRECATED_COLLECTIVES, FutureWarning,
                            r'(torch\.distributed|deepspeed)\.')


def partitions_weights(model) -> bool:
    """Whether ``model`` (the runner's) is a DeepSpeed engine, or mmengine's wrapper
    of one, that partitions the weights over the processes: ZeRO-3 (DeepSpeed answers
    from its configuration, without a collective)."""
    check = getattr(model, 'zero_optimization_partition_weights', None)
    return callable(check) and bool(check())


def _save_with_hooks(save_checkpoint):
    """``DeepSpeedStrategy.save_checkpoint`` that runs the hooks' ``before_save_checkpoint``
    (mmengine 0.10.7 drops the callback), so EMAHook and RNGStateHook save their state.

    The hooks see a checkpoint with the model's ``state_dict``, as under the plain
    Runner; it goes into DeepSpeed's ``client_state`` (EMAHook puts the EMA weights
    there, the raw ones in ``ema_state_dict``). ZeRO-3 partitions the weights: there
    the state dict is gathered on rank 0 in the module's dtype (DeepSpeed's
    consolidated 16-bit state dict) and the hooks run on every process (ShardedEMAHook
    gathers its float32 average).
    """
    def wrapped(self, filename, *, extra_ckpt=None, callback=None, **kwargs):
        if callback is not None:
            from mmengine.runner.checkpoint import weights_to_cpu
            extra_ckpt = dict(extra_ckpt or {})
            if partitions_weights(self.model):  # a gather: every rank takes part
                full = self.model._zero3_consolidated_16bit_state_dict()
                extra_ckpt['state_dict'] = dict(full or {})  # None off rank 0
            else:
                extra_ckpt['state_dict'] = weights_to_cpu(self.model.module.state_dict())
            callback(extra_ckpt)
        return save_checkpoint(self, filename, extra_ckpt=extra_ckpt, **kwargs)
    return wrapped


def _resume_with_hooks(resume):
    """``DeepSpeedStrategy.resume`` that keeps the hooks' ``after_load_checkpoint`` for
    :class:`ResumeHooksHook`: FlexibleRunner resumes before the hooks' ``before_run``,
    when EMAHook has no EMA model to load into yet."""
    def wrapped(self, filename, *, callback=None, **kwargs):
        extra_ckpt = resume(self, filename, **kwargs)
        if callback is not None and 'state_dict' in extra_ckpt:
            self.pending_load_callback = partial(callback, extra_ckpt)
        return extra_ckpt
    return wrapped


@HOOKS.register_module()
class ResumeHooksHook(Hook):
    """Runs the hooks' ``after_load_checkpoint`` of a resumed DeepSpeed run at
    ``before_run`` (after EMAHook's, which builds the EMA model): EMA weights and RNG
    states continue as in an uninterrupted run. Added by ``--deepspeed``."""

    priority = 'LOW'

    def before_run(self, runner) -> None:
        pending = getattr(runner.strategy, 'pending_load_callback', None)
        if pending is not None:
            runner.strategy.pending_load_callback = None
            pending()



def register_deepspeed_optimizers():
    """mmengine's ``register_deepspeed_optimizers`` for any DeepSpeed version: the
    1-bit optimizers only where DeepSpeed still has them, idempotent."""
    import importlib

    from mmengine.registry import OPTIMIZERS
    names = []
    for module, classes in (
            ('deepspeed.ops.adam', ('DeepSpeedCPUAdam', 'FusedAdam')),
            ('deepspeed.ops.lamb', ('FusedLamb',)),
            # removed in DeepSpeed 0.17
            ('deepspeed.runtime.fp16.onebit', ('OnebitAdam', 'OnebitLamb', 'ZeroOneAdam'))):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for name in classes:
            if hasattr(mod, name):
                OPTIMIZERS.register_module(module=getattr(mod, name), force=True)
                names.append(name)
    return names


# mmsora's EMAHook (one update per optimizer step, mmsora/engine/ema.py) and
# mmengine's, which a config names with its scope: both are switched alike.
_EMA_HOOKS = ('EMAHook', 'mmengine.EMAHook')


def _is(hook, *names: str) -> bool:
    """Whether ``hook`` is exactly one of the registered hooks ``names``, however the
    config gives it: by name, by name with its scope (``'mmengine.EMAHook'``), by
    class, or built."""
    classes = tuple(HOOKS.get(name) for name in names)
    if None in classes:  # a misspelt name here would quietly match nothing
        raise KeyError(f'no hook registered as {names[classes.index(None)]!r}')
    return hook_class(hook) in classes


def _config_of(hook, why: str) -> dict:
    """The hook's config, to be rewritten; a hook given built cannot be."""
    if isinstance(hook, Hook):
        raise UserError(f'{why} switches the EMA hook to another class; give it as a '
                        f'config (dict(type={type(hook).__name__!r}, ...)), not built')
    return hook


def _use_sharded_ema(hooks: list, why: str, others: bool = False) -> None:
    """Switch the config's EMAHook to ShardedEMAHook (same arguments). Another
    average (``ema_type``) is refused, or with ``others`` left to mmengine."""
    for hook in hooks:
        if not _is(hook, *_EMA_HOOKS, 'FP32EMAHook'):
            continue
        hook = _config_of(hook, why)
        ema_type = hook.get('ema_type')
        if ema_type not in (None, 'ExponentialMovingAverage', 'FP32ExponentialMovingAverage'):
            if others:
                continue
            raise UserError(f'{why} keeps an exponential moving average only '
                            f'(ShardedEMAHook); the config asks for {ema_type}')
        hook.pop('ema_type', None)
        hook['type'] = 'ShardedEMAHook'


def _refuse_other_checkpoint_writers(hooks: list, config: dict) -> None:
    """ZeRO-1/2's partitioned EMA is saved whole in rank 0's client state, which every
    process reads on resume: DeepSpeed's default checkpoint writer (data-parallel rank
    0 writes the model-states file). Node-local storage (a file per node) or another
    writer would lose it on resume."""
    checkpoint = config.get('checkpoint') or {}
    other = [key for key in ('use_node_local_storage', 'writer') if checkpoint.get(key)]
    if other and any(_is(h, 'ShardedEMAHook') for h in hooks):
        raise UserError(f'the EMA of a ZeRO-1/2 run is saved by data-parallel rank 0 for '
                        f'all processes; the DeepSpeed config sets checkpoint.{other[0]}, '
                        'whose files other processes would resume from: drop it')


def to_flexible_runner_config(cfg, strategy: dict, amp_dtype=None, world_size=None):
    """Turn a Runner config into a FlexibleRunner one that trains with ``strategy``.

    DeepSpeed: ``'auto'`` values filled (:func:`fill_auto`; with ``world_size``, the
    run's processes, a ``train_batch_size`` checked), the optimizer handed to
    ``DeepSpeedOptimWrapper`` (DeepSpeed owns precision, loss scaling and clipping).
    FSDP: the optimizer wrapper stays (AMP included; fp16 with mmengine's
    ``ShardedGradScaler``); ``EMAHook`` becomes ``ShardedEMAHook`` and
    ``FSDPGradClipHook`` clips by the whole gradient's norm.
    """
    strategy = copy.deepcopy(strategy)
    kind = strategy.get('type')
    if kind == 'DeepSpeedStrategy':
        strategy['config'] = fill_auto(strategy.get('config', {}), cfg, amp_dtype,
                                       world_size)
        cfg.optim_wrapper = dict(type='DeepSpeedOptimWrapper',
                                 optimizer=cfg.optim_wrapper.optimizer)
        hooks = cfg.setdefault('custom_hooks', [])
        if not any(_is(h, 'ResumeHooksHook') for h in hooks):
            hooks.append(dict(type='ResumeHooksHook'))
        # DeepSpeed's bf16 / fp16 turn the module itself to half precision: keep the
        # EMA in float32 or its updates round away (mmsora/engine/ema.py). ZeRO-1/2
        # partition the float32 master weights: average each process's partition
        # (mmsora/engine/zero_partition_ema.py). ZeRO-3 leaves empty placeholders in
        # the module: average the partitions (mmsora/engine/sharded_ema.py).
        stage = strategy['config'].get('zero_optimization', {}).get('stage', 0)
        if stage == 3:
            _use_sharded_ema(hooks, '--deepspeed with ZeRO-3')
        elif stage in (1, 2):
            _use_sharded_ema(hooks, f'--deepspeed with ZeRO-{stage}', others=True)
            _refuse_other_checkpoint_writers(hooks, strategy['config'])
        plain_ema = 'ExponentialMovingAverage'
        for hook in hooks:
            if _is(hook, *_EMA_HOOKS) and _config_of(hook, '--deepspeed').get(
                    'ema_type', plain_ema) == plain_ema:
                hook['type'] = 'FP32EMAHook'
                hook['ema_type'] = 'FP32ExponentialMovingAverage'
    elif kind == 'FSDPStrategy':
        hooks = cfg.setdefault('custom_hooks', [])
        if cfg.optim_wrapper.get('type') == 'AmpOptimWrapper':  # fp16 loss scaling:
            cfg.optim_wrapper['use_fsdp'] = True  # inf checks over all the shards
        if not any(_is(h, 'FSDPGradClipHook') for h in hooks):
            hooks.append(dict(type='FSDPGradClipHook'))
        # mmengine's EMA deep-copies the model (impossible under FSDP): keep the
        # average sharded like the weights (mmsora/engine/sharded_ema.py).
        _use_sharded_ema(hooks, '--fsdp')
    else:
        raise UserError(f'strategy type must be DeepSpeedStrategy or FSDPStrategy, '
                        f'got {kind!r}')
    cfg.strategy = strategy
    cfg.runner_type = 'FlexibleRunner'
    cfg.pop('model_wrapper_cfg', None)  # a Runner key; strategies wrap the model
    return cfg
