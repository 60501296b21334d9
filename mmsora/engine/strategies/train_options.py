"""What ``tools/train.py``'s ``--amp``, ``--deepspeed``, ``--fsdp`` and ``--compile`` do
to a config (kept here so that they are tested without starting a run)."""
import importlib.util
import logging
import os

import torch
from mmengine.logging import print_log

from mmsora.utils.cli import UserError, note
from mmsora.utils.dist import free_port
from .deepspeed import (check_zero_settings, load_strategy, mend_mmengine_deepspeed,
                        read_deepspeed_json, to_flexible_runner_config)
from .speed import CompileDenoiserHook, prefer_fused_optimizer

__all__ = ['chosen_strategy', 'set_run_strategy', 'apply_strategy', 'apply_amp', 'drop_amp',
           'apply_speed_options', 'amp_dtype_of', 'prepare_deepspeed',
           'single_process_env', 'apply_global_batch',
           'launcher_world_size', 'fsdp_on_cpu', 'accumulation_of', 'accumulation_setting',
           'check_accumulation', 'warmup_note', 'check_fsdp_precision',
           'drop_disabled_hooks', 'fit_loader_workers',
           'seed_model_at_run_time', 'fit_amp_to_device', 'check_accumulative_counts']


def amp_dtype_of(optim_wrapper) -> str:
    """The mixed-precision dtype an optimizer wrapper config trains in (None: fp32)."""
    kind = optim_wrapper.get('type', 'OptimWrapper')
    if kind == 'AmpOptimWrapper':  # mmengine's default autocast dtype is fp16
        return optim_wrapper.get('dtype') or 'float16'
    if kind == 'AutocastOptimWrapper':
        return optim_wrapper.get('dtype', 'bfloat16')
    return None


def chosen_strategy(cfg, deepspeed=None, fsdp=None, options=()):
    """The strategy a run uses: the preset ``deepspeed`` / ``fsdp`` names, with the
    ``strategy.KEY=VALUE`` entries of ``options`` set on it, else the config's own
    ``strategy``, else None (the Runner's DDP). ``tools/train.py`` and
    ``tools/estimate_memory.py`` choose with it, so they refuse the same presets and
    options alike (what only training refuses, e.g. :func:`check_fsdp_precision`, is
    checked in :func:`apply_strategy`). A DeepSpeed ``config`` given as a JSON file
    is read into a dict here (:func:`read_config_file`).

    Args:
        cfg (Config): The config.
        deepspeed (str, optional): A DeepSpeedStrategy preset name or file: a ``.py``
            config holding ``strategy = dict(...)``, or a DeepSpeed ``.json`` config.
        fsdp (bool | str, optional): An FSDPStrategy preset name or file; True is
            ``fsdp``. An empty name fails as an unknown strategy.
        options (list[str]): The command line's ``--cfg-options``.

    Returns:
        dict | None: A copy, whose ``type`` is DeepSpeedStrategy or FSDPStrategy.
    """
    if deepspeed and fsdp not in (None, False):
        raise UserError('--deepspeed and --fsdp exclude each other')
    if deepspeed:
        flag = f'--deepspeed {deepspeed}'
        strategy = load_strategy(deepspeed, options, kind='deepspeed')
        if strategy.get('type') != 'DeepSpeedStrategy':
            raise UserError(f'{flag}: not a DeepSpeedStrategy preset'
                            + (' (FSDP: --fsdp)' if strategy.get('type') == 'FSDPStrategy'
                               else ''))
    elif fsdp not in (None, False):
        fsdp = 'fsdp' if fsdp is True else fsdp
        flag = f'--fsdp {fsdp}'
        strategy = load_strategy(fsdp, options, kind='fsdp')
        if strategy.get('type') != 'FSDPStrategy':
            raise UserError(f'{flag}: not an FSDPStrategy preset'
                            + (' (DeepSpeed: --deepspeed)'
                               if strategy.get('type') == 'DeepSpeedStrategy' else ''))
    elif cfg.get('strategy'):
        flag, strategy = None, cfg.strategy.to_dict()
    else:
        return None
    if flag and (cfg.get('strategy') or {}).get('type'):  # the config file's own (not
        # one that --cfg-options strategy.KEY=VALUE made up: those set the preset)
        print_log(f'{flag} replaces the config\'s own strategy '
                  f'({cfg.strategy.get("type")}): none of its fields are kept; '
                  '--cfg-options strategy.KEY=VALUE sets them on the preset',
                  logger='current', level=logging.WARNING)
    kind = strategy.get('type')
    if kind not in ('DeepSpeedStrategy', 'FSDPStrategy'):
        raise UserError(f'strategy type must be DeepSpeedStrategy or FSDPStrategy, '
                        f'got {kind!r}' + (' (--cfg-options strategy.KEY=VALUE set a '
                                           'preset when --deepspeed / --fsdp name one)'
                                           if kind is None else ''))
    if kind == 'DeepSpeedStrategy':
        read_config_file(strategy)
        check_zero_settings(strategy)
    else:
        check_sharding_strategy(strategy)
    return strategy


def read_config_file(strategy: dict) -> dict:
    """A DeepSpeedStrategy's ``config`` given as the path of a DeepSpeed JSON file
    (``--cfg-options strategy.config=ds.json``; mmengine's strategy takes one) read
    into a dict here, once, where the run's strategy is chosen: every reader after
    (the ZeRO check, the accumulation, the memory estimate, :func:`fill_auto
    <mmsora.engine.strategies.deepspeed.fill_auto>`) takes the dict, and the run's
    dumped config holds the settings it trained with."""
    config = strategy.get('config')
    if isinstance(config, str):
        strategy['config'] = read_deepspeed_json(config, f'strategy.config={config}')
    elif config is not None and not isinstance(config, dict):
        raise UserError(f'strategy.config={config!r}: a DeepSpeed config is a dict or '
                        'the path of a DeepSpeed JSON file')
    return strategy


def set_run_strategy(cfg, deepspeed=None, fsdp=None, options=()):
    """Choose the run's strategy once (:func:`chosen_strategy`) and put it in
    ``cfg.strategy`` as given, its ``'auto'`` values unfilled, where every reader of
    the accumulation finds it before :func:`apply_strategy` runs (which then takes it
    as the config's own): a ``--deepspeed`` preset's ``--cfg-options
    strategy.config.gradient_accumulation_steps=K`` was in no config until then, and
    the global batch split, the notes and ``tools/estimate_memory.py``'s figures left
    the K out. ``tools/train.py`` and ``tools/estimate_memory.py`` call it first.

    Returns:
        dict | None: The strategy (None: the Runner's DDP; ``cfg`` is then unchanged).
    """
    strategy = chosen_strategy(cfg, deepspeed, fsdp, options)
    if strategy is not None:
        cfg['strategy'] = strategy
    return strategy


def check_sharding_strategy(strategy: dict) -> None:
    """An FSDP ``model_wrapper.sharding_strategy`` that is not one of torch's names
    (mmengine looked it up and failed with a bare KeyError), refused in one line."""
    value = (strategy.get('model_wrapper') or {}).get('sharding_strategy')
    if not isinstance(value, str):
        return
    from torch.distributed.fsdp import ShardingStrategy
    names = [s.name for s in ShardingStrategy]
    if value not in names:
        import difflib
        close = difflib.get_close_matches(value, names, n=1)
        raise UserError(f'strategy.model_wrapper.sharding_strategy={value}: not one of '
                        f'{", ".join(names)}' + (f'; did you mean {close[0]}?' if close
                                                 else ''))


def apply_strategy(cfg, deepspeed=None, fsdp=False, options=()):
    """Train with DeepSpeed ZeRO or FSDP through mmengine's FlexibleRunner.

    Args:
        cfg (Config): The training config (``cfg.launcher`` set). A ``strategy`` the
            config itself holds (e.g. inherited from ``_base_/strategies``, or put there
            by :func:`set_run_strategy`, as ``tools/train.py`` does) is used when
            neither option is given.
        deepspeed (str, optional): A preset name (``deepspeed_zero2``) or a file
            (``.py``, or a DeepSpeed ``.json`` config).
        fsdp (bool | str): A preset name (``fsdp``, ``fsdp_bf16``) or a file;
            True is ``fsdp``.
        options (list[str]): The command line's ``--cfg-options``: those under
            ``strategy.`` are set on the preset that ``deepspeed`` / ``fsdp`` loads
            (the config's own ``strategy`` already has them).

    Returns:
        Config: ``cfg``, switched to ``runner_type='FlexibleRunner'`` if a strategy
        applies, else unchanged.
    """
    strategy = chosen_strategy(cfg, deepspeed, fsdp, options)
    if strategy is None:
        return cfg
    if strategy.get('type') == 'FSDPStrategy':
        if cfg.launcher == 'none':
            raise UserError('FSDP shards the model across processes: start it with '
                            'tools/dist_train.sh CONFIG GPUS --fsdp (or --launcher '
                            'pytorch)')
        check_fsdp_precision(strategy, cfg.optim_wrapper)
        if not torch.cuda.is_available():
            fsdp_on_cpu(strategy)
    steps = strategy.get('gradient_accumulation_steps')
    if strategy.get('type') == 'DeepSpeedStrategy' and steps is not None:
        # mmengine puts its argument over the config's: the same count in both, or the
        # config's 'auto' took the wrapper's (fill_auto), and the run's dumped config,
        # started again, held two counts (refused: accumulation_setting)
        strategy['config'] = dict(strategy.get('config') or {},
                                  gradient_accumulation_steps=steps)
    return to_flexible_runner_config(cfg, strategy, amp_dtype_of(cfg.optim_wrapper),
                                     launcher_world_size(cfg.launcher))


def check_fsdp_precision(strategy: dict, optim_wrapper: dict) -> None:
    """Refuse an FSDP ``MixedPrecision`` that would not train as asked:

    - float16 gathered weights (``param_dtype``) or gradient reduction
      (``reduce_dtype``, which defaults to ``param_dtype``) without the loss scaling of
      ``--amp`` in float16 (``AmpOptimWrapper``, whose ``ShardedGradScaler`` scales the
      loss): DiT's small gradients underflow in float16 and the run learns slowly or
      not at all, without an error;
    - bfloat16 gathered weights (``param_dtype``) on a GPU without bfloat16 (before
      Ampere: V100, T4), where torch emulates it slowly; ``--fsdp --amp`` trains in
      float16 with loss scaling there.
    """
    mixed = (strategy.get('model_wrapper') or {}).get('mixed_precision')
    if not isinstance(mixed, dict):  # none, or a MixedPrecision given built
        return

    def dtype(value):  # mmengine takes torch dtypes or their names
        return getattr(torch, value, value) if isinstance(value, str) else value

    param, reduce = dtype(mixed.get('param_dtype')), dtype(mixed.get('reduce_dtype'))
    reduce = reduce if reduce is not None else param
    half = [k for k, v in (('param_dtype', param), ('reduce_dtype', reduce))
            if v is torch.float16]
    if half and not (optim_wrapper.get('type') == 'AmpOptimWrapper'
                     and dtype(amp_dtype_of(optim_wrapper)) is torch.float16):
        raise UserError(f"FSDP mixed_precision {' and '.join(half)} float16 without loss "
                        'scaling: the gradients underflow. Add --amp on a GPU without '
                        'bfloat16 (float16 with a ShardedGradScaler), or train in '
                        'bfloat16 (--fsdp fsdp_bf16)')
    if (param is torch.bfloat16 and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise UserError('FSDP mixed_precision param_dtype bfloat16: this GPU has no '
                        'bfloat16 (torch would emulate it, slowly); train with --fsdp '
                        '--amp (float16 with loss scaling)')


def fsdp_on_cpu(strategy: dict) -> dict:
    """An FSDP strategy that runs on CPU processes (gloo). mmengine passes LOCAL_RANK
    as the CUDA device (torch's FSDP takes ``device_id='cpu'`` instead), and its
    ``state_dict_cfg='full'`` gathers with ``offload_to_cpu=True``, which crashes
    torch 2.13 (SIGSEGV) when the weights already are on the CPU: the same full
    state dicts, gathered on rank 0, without the offload. (Gathered on every rank,
    torch's default, the full optimizer state was once observed to hold AdamW's
    ``exp_avg_sq`` values under ``exp_avg`` too on CPU.)"""
    strategy.setdefault('model_wrapper', {}).setdefault('device_id', 'cpu')
    if strategy.get('state_dict_cfg', 'full') == 'full':
        strategy['state_dict_cfg'] = dict(
            state_dict_type='FULL_STATE_DICT',
            state_dict_config=dict(type='FullStateDictConfig', rank0_only=True,
                                   offload_to_cpu=False),
            optim_state_dict_config=dict(type='FullOptimStateDictConfig',
                                         rank0_only=True, offload_to_cpu=False))
    return strategy


def prepare_deepspeed(cfg) -> bool:
    """Before a ``--deepspeed`` run starts: check that DeepSpeed is installed and mend
    mmengine for it. Returns whether ``cfg`` trains with DeepSpeed."""
    if (cfg.get('strategy') or {}).get('type') != 'DeepSpeedStrategy':
        return False
    if importlib.util.find_spec('deepspeed') is None:
        raise UserError('DeepSpeed is not installed: pip install deepspeed '
                        '(see requirements/optional.txt)')
    mend_mmengine_deepspeed()
    return True


def single_process_env(cfg) -> dict:
    """The ``torch.distributed`` variables a one-process DeepSpeed run (``--launcher
    none``) needs: DeepSpeed sets up a process group even for one GPU. Empty for
    other runs. ``tools/train.py`` adds the ones missing from ``os.environ``."""
    strategy = cfg.get('strategy') or {}
    if cfg.launcher != 'none' or strategy.get('type') != 'DeepSpeedStrategy':
        return {}
    return dict(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
                MASTER_PORT=str(free_port()))


def apply_amp(cfg, dtype=None, device=None):
    """``tools/train.py --amp``: mixed precision over float32 weights.

    On CUDA mmengine's ``AmpOptimWrapper`` with a dynamic loss scale, in ``dtype``
    (default: the config's ``optim_wrapper.dtype``, else ``'bfloat16'`` where the GPU
    has it, else ``'float16'``); on the CPU (which mmengine's wrapper refuses)
    :class:`AutocastOptimWrapper` in ``dtype`` (default: the config's, else
    ``'bfloat16'``; float16 becomes bfloat16, with a note). ``device`` defaults to CUDA
    when there is one."""
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    # (--cfg-options optim_wrapper.dtype=float16 is how fp16 is chosen with --amp)
    dtype = dtype or _dtype_name(cfg.optim_wrapper.get('dtype'))
    if dtype is not None and dtype not in ('float16', 'bfloat16'):
        raise UserError(f'optim_wrapper.dtype={dtype}: mixed precision trains in float16 '
                        'or bfloat16; set optim_wrapper.dtype=float16 or bfloat16')
    drop_amp(cfg)  # a config's other AMP settings belong to the other wrapper
    if device == 'cuda':
        if dtype == 'bfloat16' and not torch.cuda.is_bf16_supported():
            note('optim_wrapper.dtype=bfloat16: this GPU has no bfloat16, training in '
                 'float16 with loss scaling instead')
            dtype = 'float16'
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = dtype or ('bfloat16' if torch.cuda.is_bf16_supported()
                                            else 'float16')
        cfg.optim_wrapper.loss_scale = 'dynamic'
    else:
        if dtype == 'float16':
            note(f'optim_wrapper.dtype=float16 on the {device.upper()}: training in '
                 f'bfloat16 instead ({CPU_FP16_WHY})')
        cfg.optim_wrapper.type = 'AutocastOptimWrapper'
        cfg.optim_wrapper.dtype = 'bfloat16'
        cfg.optim_wrapper.device_type = device
    return cfg


# Why float16 autocast is not used on the CPU (it has no loss scaling there either).
CPU_FP16_WHY = 'float16 autocast is very slow on the CPU'


def _dtype_name(value):
    """``'float16'`` for ``torch.float16`` or ``'float16'``; None stays None."""
    return None if value is None else str(value).replace('torch.', '')


def fit_amp_to_device(cfg, device=None):
    """A config's own ``AmpOptimWrapper`` (the card presets') on a machine without
    CUDA: mmengine's wrapper asserts a GPU after the Runner's start-up, so the run
    trains as ``--amp`` does there (bfloat16 autocast, :func:`apply_amp`), with a
    note. ``device`` defaults to CUDA when there is one; other configs are left as
    they are."""
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    wrapper = cfg.get('optim_wrapper') or {}
    if device == 'cuda' or wrapper.get('type') != 'AmpOptimWrapper':
        return cfg
    dtype = amp_dtype_of(wrapper)
    why = f': {CPU_FP16_WHY}' if dtype == 'float16' else ''
    note(f'optim_wrapper.type=AmpOptimWrapper ({dtype}) needs a GPU: on the '
         f'{device.upper()} the run trains in bfloat16 autocast (AutocastOptimWrapper), '
         f'as --amp does there{why}', once=True)
    apply_amp(cfg, dtype='bfloat16', device=device)
    return cfg


def drop_amp(cfg):
    """Train in full precision: mmengine's plain ``OptimWrapper`` in place of an
    ``AmpOptimWrapper`` / ``AutocastOptimWrapper``, without their settings."""
    for key in ('dtype', 'loss_scale', 'device_type'):
        cfg.optim_wrapper.pop(key, None)
    if cfg.optim_wrapper.get('type') in ('AmpOptimWrapper', 'AutocastOptimWrapper'):
        cfg.optim_wrapper.type = 'OptimWrapper'
    return cfg


def apply_speed_options(cfg, compile=False, device=None):
    """Fused Adam/AdamW on CUDA (unless the config sets ``fused``/``foreach``), and
    with ``compile`` a :class:`CompileDenoiserHook` (unless the config has one).
    ``device`` defaults to CUDA when there is one."""
    prefer_fused_optimizer(cfg.optim_wrapper.optimizer,
                           device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    hooks = cfg.setdefault('custom_hooks', [])
    from mmsora.utils.training_inputs import hook_class
    if compile and not any(issubclass(hook_class(h), CompileDenoiserHook) for h in hooks):
        hooks.append(dict(type='CompileDenoiserHook'))
    return cfg


def launcher_world_size(launcher: str) -> int:
    """How many processes the run has, from the launcher's environment."""
    if launcher == 'pytorch':  # torchrun / dist_train.sh
        return int(os.environ.get('WORLD_SIZE', 1))
    if launcher == 'slurm':  # srun; mmengine's slurm setup uses the same count
        return int(os.environ.get('SLURM_NTASKS', 1))
    return 1


def apply_global_batch(cfg, world_size: int):
    """Set the per-process batch from a config's ``global_batch_size`` (DiT's
    ``--global-batch-size``): ``global_batch_size / (world_size * accumulation)``, the
    accumulation :func:`accumulation_setting` reads (the lines of ``tools/train.py``,
    ``tools/estimate_memory.py`` and ``tools/benchmark.py`` name it too).

    Without ``global_batch_size`` the config's ``train_dataloader.batch_size`` stays
    the per-process batch (OpenMMLab's ``8xb32`` naming). Returns the per-process
    batch, or None when the config has no global batch.
    """
    total = cfg.get('global_batch_size')
    if total is None:
        return None
    # the micro-batches the run accumulates: a DeepSpeed strategy's own count too (it
    # divided by optim_wrapper.accumulative_counts alone, and DeepSpeed's
    # gradient_accumulation_steps=2 then trained twice the global batch)
    accum, setting = accumulation_setting(cfg)
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:  # (True was
        # taken as 1: a batch of 1 per process)
        raise UserError(
            f'global_batch_size={total!r}: the global batch is a whole number of samples '
            f'>= 1 (all processes and accumulation steps together); set '
            f'global_batch_size=N' + (f', a multiple of {world_size * accum}'
                                      if world_size * accum > 1 else ''))
    if total % (world_size * accum) != 0:
        raise UserError(
            f'global_batch_size={total!r} does not split evenly over {world_size} '
            f'process(es) x {accum} accumulation step(s) '
            f'({setting}): pick a multiple of {world_size * accum}')
    cfg.train_dataloader.batch_size = total // (world_size * accum)
    return cfg.train_dataloader.batch_size


def accumulation_of(cfg) -> int:
    """Micro-batches per optimizer step a training config asks for: DeepSpeed's
    ``gradient_accumulation_steps`` (the strategy's own argument, which mmengine puts
    over its config's, or the config's once filled in by ``--deepspeed``), else
    ``optim_wrapper.accumulative_counts``."""
    return accumulation_setting(cfg)[0]


def accumulation_setting(cfg) -> tuple:
    """:func:`accumulation_of` and the setting that gives it, for the lines that say
    how a global batch is split. A DeepSpeed ``gradient_accumulation_steps`` left
    ``'auto'`` in its config is ``optim_wrapper.accumulative_counts`` (``fill_auto``
    copies it). The one rule for every split, check and note of the accumulation, read
    from ``cfg.strategy``: a ``--deepspeed`` preset's own count (``--cfg-options
    strategy.config.gradient_accumulation_steps=K``) is there once
    :func:`set_run_strategy` has put the run's strategy in the config.

    A DeepSpeed count that is set is checked as ``accumulative_counts`` is (2.0 fell
    through to the optimizer wrapper's count while DeepSpeed accumulated 2.0: the
    global batch split divided by 1), and refused next to another count: an
    ``optim_wrapper.accumulative_counts`` the config gives (``DeepSpeedOptimWrapper``
    replaces the wrapper: the latter was dropped unsaid), or the strategy's argument
    next to its config's (mmengine puts the argument over the config's, unsaid), but
    for a config's 1 without a wrapper count (the fill of a run dumped before the
    argument was written into the config). The wrapper's count is given when its key is
    there (mmengine's default, 1, is not)."""
    wrapper = cfg.get('optim_wrapper') or {}
    given = 'accumulative_counts' in wrapper
    counts = check_accumulative_counts(wrapper.get('accumulative_counts', 1))
    strategy = cfg.get('strategy') or {}
    if strategy.get('type') != 'DeepSpeedStrategy':
        return counts, 'optim_wrapper.accumulative_counts'
    found = []  # (count, setting), the one DeepSpeed takes first
    for setting, steps, auto in (
            # (mmengine writes its own argument over the config's, 'auto' too, which
            # nothing fills)
            ('strategy.gradient_accumulation_steps',
             strategy.get('gradient_accumulation_steps'), False),
            ('strategy.config.gradient_accumulation_steps',
             (strategy.get('config') or {}).get('gradient_accumulation_steps'), True)):
        if steps is None or (auto and steps == 'auto'):
            continue
        found.append((check_accumulative_counts(steps, setting), setting))
    if not found:
        return counts, 'optim_wrapper.accumulative_counts'
    if len(found) == 2 and found[1][0] == 1 and not given:
        # the config's 1 beside the argument's K, no wrapper count: what fill_auto put
        # for 'auto' (the wrapper's default) in a run dumped before apply_strategy wrote
        # the argument into the config; DeepSpeed took K there, and does here
        del found[1]
    (steps, setting), others = found[0], found[1:]
    if given:
        others.append((counts, 'optim_wrapper.accumulative_counts'))
    for count, other in others:
        if count != steps:
            raise UserError(
                f'{setting}={steps} and {other}={count}: two micro-batch counts per '
                f'optimizer step (DeepSpeed would accumulate {steps} and drop the other); '
                'give one of them, or the same count to both')
    return steps, setting


def check_accumulative_counts(value, option='optim_wrapper.accumulative_counts') -> int:
    """``value``, the micro-batches per optimizer step, if it is an int >= 1; else a
    one-line refusal naming ``option``. (mmengine failed on 0 or -2 with an
    AssertionError after the Runner's start-up, and took 2.5: steps every 5th
    iteration with the loss divided by 2.5.)"""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f'{option}={value!r}: the micro-batches per optimizer step are a '
                        f'whole number >= 1 (1: no gradient accumulation); set {option}=K')
    return value


# The default hooks mmengine's Runner knows: ``default_hooks.NAME=None`` removes one.
MMENGINE_DEFAULT_HOOKS = ('runtime_info', 'timer', 'sampler_seed', 'logger',
                          'param_scheduler', 'checkpoint')


def drop_disabled_hooks(cfg) -> list:
    """Remove the default hooks a config sets to None; return their names.

    ``--cfg-options default_hooks.loss_guard=None`` turns our LossGuardHook off
    (docs/reliability.md), but mmengine's Runner takes None only for its own six
    default hooks and failed on any other with a bare AssertionError."""
    hooks = cfg.get('default_hooks') or {}
    off = [name for name, hook in hooks.items()
           if hook is None and name not in MMENGINE_DEFAULT_HOOKS]
    for name in off:
        hooks.pop(name)
    return off


def fit_loader_workers(cfg) -> None:
    """``persistent_workers`` off where a loader has no workers: torch's DataLoader
    refuses the pair, and ``--cfg-options train_dataloader.num_workers=0`` (the way to
    debug a loader in one process) stopped the configs that keep their workers with
    'persistent_workers option needs num_workers > 0'."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key)
        if isinstance(loader, dict) and loader.get('num_workers', 0) == 0 \
                and loader.get('persistent_workers'):
            loader['persistent_workers'] = False


def check_accumulation(cfg) -> None:
    """Refuse what gradient accumulation cannot do exactly.

    Iteration checkpoints between the micro-batches of one optimizer step: the
    gradients accumulated so far are not saved (neither mmengine nor DeepSpeed keeps
    them), so ``--resume`` from such a checkpoint would take its next step on fewer
    micro-batches than the uninterrupted run (mmengine only warns when it resumes).
    mmengine's wrapper steps at the run's last iteration whatever the count, so its
    checkpoint is whole; DeepSpeed never steps a part-filled window, so under
    DeepSpeed ``max_iters`` must be a multiple too. Checkpoints by epoch
    (``by_epoch=True``) are not checked: the epoch's length is known only at run
    time. And ``model.train_noise_seed`` keys its draws by optimizer step, which
    ``ResumeCheckHook`` tells the model: it must be there. A warm-up counted in
    iterations is said in optimizer steps (:func:`warmup_note`).

    ``tools/train.py`` checks the strategy :func:`set_run_strategy` put in the config
    before :func:`apply_strategy` fills in its ``'auto'`` values, so that the lines
    name the setting the user gave (DeepSpeed's ``gradient_accumulation_steps`` filled
    from ``optim_wrapper.accumulative_counts`` was named as
    ``strategy.config.gradient_accumulation_steps``)."""
    accumulation, setting = accumulation_setting(cfg)
    if accumulation <= 1:
        return
    said = warmup_note(cfg)
    if said:
        note(said)
    why = f'micro-batches of an optimizer step ({setting})'
    if (cfg.get('model') or {}).get('train_noise_seed') is not None and not (
            cfg.get('default_hooks') or {}).get('resume_check'):
        raise UserError('model.train_noise_seed with gradient accumulation keys the draws '
                        'by optimizer step, which ResumeCheckHook tells the model: keep '
                        'default_hooks.resume_check')
    if (cfg.get('strategy') or {}).get('type') == 'DeepSpeedStrategy':
        iters = (cfg.get('train_cfg') or {}).get('max_iters')
        if isinstance(iters, int) and iters % accumulation:
            lower = iters - iters % accumulation
            upper = lower + accumulation
            raise UserError(
                f'train_cfg.max_iters={iters} is not a multiple of the {accumulation} '
                f'{why}: DeepSpeed never steps a part-filled one, so the last '
                f'{iters % accumulation} iteration(s) would train for nothing; use '
                + (f'{lower} or {upper}' if lower else f'{upper}'))
    hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if not isinstance(hook, dict) or hook.get('by_epoch', True):
        return
    for key in ('interval', 'save_begin'):  # mmengine saves at save_begin + m * interval
        value = hook.get(key, 0)
        if value > 0 and value % accumulation:
            whole = -(-value // accumulation) * accumulation
            raise UserError(
                f'default_hooks.checkpoint.{key}={value} is not a multiple of the '
                f'{accumulation} {why}: a checkpoint inside a step loses the gradients '
                'accumulated so far and --resume could not continue the run exactly; '
                f'use a multiple, e.g. default_hooks.checkpoint.{key}={whole}')


def _warmup_kind(scheduler: dict):
    """The type of a scheduler entry that raises the learning rate from its ``begin``
    (a warm-up): mmengine's ``LinearLR`` with ``start_factor < end_factor``, or its
    ``ConstantLR`` with ``factor < 1`` (``factor=1.0``, the ImageNet recipe's, keeps
    the rate); their defaults are mmengine's. None for any other entry."""
    kind = scheduler.get('type')
    kind = getattr(kind, '__name__', kind)
    kind = kind.split('.')[-1] if isinstance(kind, str) else None
    if kind == 'LinearLR' and \
            scheduler.get('start_factor', 1 / 3) < scheduler.get('end_factor', 1.0):
        return kind
    if kind == 'ConstantLR' and scheduler.get('factor', 1 / 3) < 1:
        return kind
    return None


def warmup_note(cfg):
    """With gradient accumulation over k micro-batches, a warm-up given in iterations
    (``by_epoch=False``: mmengine's ``ParamSchedulerHook`` steps the schedulers at
    every iteration, i.e. micro-batch) lasts k times fewer optimizer steps than the
    same config without accumulation: the line that says how many, and what to set
    to keep the config's number of steps (the warm-up's ``end``, and the ``begin`` of
    the schedulers that start where it ends). None without accumulation, without
    such a warm-up, or on ``--resume`` (which keeps the checkpoint's schedule).
    The note names the setting that gives the accumulation (:func:`accumulation_setting`)."""
    accumulation, setting = accumulation_setting(cfg)
    schedulers = cfg.get('param_scheduler') or []
    if accumulation <= 1 or cfg.get('resume'):
        return None
    single = isinstance(schedulers, dict)  # mmengine takes one scheduler as a dict
    entries = [schedulers] if single else list(schedulers)
    names = ['param_scheduler' if single else f'param_scheduler.{i}'
             for i in range(len(entries))]
    for i, scheduler in enumerate(entries):
        kind = _warmup_kind(scheduler) if isinstance(scheduler, dict) else None
        if kind is None or scheduler.get('by_epoch', True):
            continue
        begin, end = scheduler.get('begin', 0), scheduler.get('end')
        if type(begin) is not int or type(end) is not int or begin != 0 or end <= 0 \
                or end >= int(1e9):  # (mmengine's INF: no end, no warm-up length)
            continue
        kept = end * accumulation
        fixes = [f'{names[i]}.end={kept}'] + [
            f'{names[j]}.begin={kept}' for j, other in enumerate(entries)
            if j != i and isinstance(other, dict) and not other.get('by_epoch', True)
            and other.get('begin') == end]
        return (f'{names[i]} ({kind}) warms the learning rate up over {end} iterations '
                f'(by_epoch=False), which at {setting}={accumulation} (micro-batches per '
                f'optimizer step) are {end / accumulation:g} optimizer steps; for {end} '
                f'optimizer steps, as without accumulation: --cfg-options '
                f'{" ".join(fixes)}')
    return None


def seed_model_at_run_time(runner) -> None:
    """With ``randomness.seed=None`` mmengine draws the run's seed when the runner
    starts (rank 0's, broadcast; plus the rank with ``diff_rank_seed``). A
    ``FlexibleRunner`` builds the model later, on every process: the drawn seed
    becomes its ``init_seed``, as ``tools/train.py`` arranges for a configured seed.
    Rank 0's build is the start: mmengine's strategies broadcast its weights after
    ``init_weights``. A model already built, or a config that sets
    ``model.init_seed`` (None included), is left alone."""
    model = runner.model
    if not isinstance(model, dict) or 'init_seed' in model:
        return
    model['init_seed'] = runner.seed
    runner.logger.info(f'model.init_seed={runner.seed}: the seed drawn at run time '
                       '(randomness.seed=None)')
