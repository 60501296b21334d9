"""Command-line plumbing shared by tools/: config loading, --cfg-options, and one-line
errors for user mistakes (instead of a traceback)."""
import argparse
import difflib
import math
import os
import os.path as osp
import re
import sys

__all__ = ['UserError', 'RunError', 'Interrupted', 'ArgumentParser', 'load_config',
           'apply_cfg_options', 'run_cli', 'explain_error', 'parse_config_and_preset',
           'add_malloc_option',
           'keep_freed_memory_on_cpu', 'checkpointing_setting', 'device_setting',
           'unknown_key_message', 'unknown_type_message', 'missing_arguments_message',
           'check_output_path', 'check_at_least', 'read_user_text', 'first_line',
           'is_launch_rank0',
           'is_first_on_machine', 'torchrun_processes', 'check_torchrun_launcher',
           'add_note', 'check_samples_not_finished']


class UserError(Exception):
    """A mistake in what the user gave (path, option, config); printed as one line."""


class RunError(Exception):
    """A run stopped for a reason outside the code (full disk, diverging loss);
    printed as one line."""


def load_config(path):
    """Load an mmengine config file, naming it in any error.

    Before: a folder given for the config (a work dir) was 'config file not found';
    an error in a ``_base_`` file was reported against the config given (a SyntaxError
    with the base's line number, ``<unknown>`` for its file); and ``custom_imports``
    were imported by mmengine alone: from the folder of the tool (tools/), not the
    working directory, and any failure, a missing module or one that raised inside,
    came out as the same 8 lines telling to set PYTHONPATH. Now the folder, the file
    at fault and the module at fault are named in one line (:func:`_import_custom_modules`).
    """
    from mmengine.config import Config
    if osp.isdir(path):
        raise UserError(_folder_given_message(path))
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path}{_close_configs(path)}')
    try:
        # custom_imports: ours below, which say what failed (mmengine's say PYTHONPATH)
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception as e:  # syntax errors, bad _base_ paths, ...
        raise UserError(_config_error_message(path, e)) from e
    _import_custom_modules(cfg.get('custom_imports'))  # (their classes, for the notes)
    _note_variables_left_in_base(path, cfg)
    return cfg


def _close_configs(path) -> str:
    """'; did you mean ...' for a config path not found: the same file name in another
    folder of configs/ (configs/dit_s2_....py for configs/dit/dit_s2_....py), else close
    names in the folder given and under configs/ of the working directory; files under
    ``_base_`` only for a path under ``_base_``."""
    import glob
    name = osp.basename(path)
    if not name:
        return ''
    folder = osp.dirname(path)
    found = set()
    if osp.isdir(folder or '.'):
        found.update(osp.join(folder, f) for f in os.listdir(folder or '.') if f.endswith('.py'))
    found.update(glob.glob(osp.join('configs', '**', '*.py'), recursive=True))
    found = sorted(f for f in found if '__pycache__' not in f)
    if '_base_' not in path:  # a config to run: not a fragment of one (configs/_base_/
        # models/video_dit_xl2.py for configs/video_dit/video_dit_xl2_24gb.py)
        found = [f for f in found if '_base_' not in f.split(os.sep)]
    same = [f for f in found if osp.basename(f) == name]
    if not same:
        by_name = {}
        for f in found:
            by_name.setdefault(osp.basename(f), f)
        close = difflib.get_close_matches(name, list(by_name), n=3, cutoff=0.75)
        same = [by_name[c] for c in close]
    return f"; did you mean {' or '.join(same[:3])}?" if same else ''


def _folder_given_message(path) -> str:
    """A folder given where a config file is wanted; a work dir of tools/train.py (one
    dumped config next to ``last_checkpoint`` or ``iter_*.pth``) gets its config named."""
    import glob
    message = f'{path} is a folder, not a config file'
    configs = [c for c in glob.glob(osp.join(path, '*.py'))
               if osp.basename(c) not in ('zero_to_fp32.py', 'zero_to_torch.py')]
    trained = (osp.exists(osp.join(path, 'last_checkpoint'))
               or glob.glob(osp.join(path, 'iter_*.pth')))
    if len(configs) == 1 and trained:
        return f"{message}: give the config file (this work dir's is {configs[0]})"
    return f'{message}: give the config file'


def _shown_path(path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    relative = osp.relpath(path)
    return osp.normpath(path) if relative.startswith('..') else relative


def _config_error_message(path, error) -> str:
    """``cannot load config PATH: ...`` naming the file at fault: mmengine reads the
    ``_base_`` files in ``Config._file2dict`` (one call per file): the innermost such
    call in the traceback is the file it was reading. Before, an error in a base was
    given against ``path``, with the base's line number (and ``<unknown>`` for the file
    of a SyntaxError), as if ``path`` had it."""
    culprit, line = None, None
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == '_file2dict' and 'mmengine' in code.co_filename:
            culprit, line = tb.tb_frame.f_locals.get('filename', culprit), None
        elif culprit and code.co_filename == culprit:  # the config's code (eval)
            line = tb.tb_lineno
        tb = tb.tb_next
    if isinstance(error, SyntaxError):
        text, line = f'SyntaxError: {error.msg}', error.lineno
    elif str(error).startswith('Only py/yml/yaml/json type'):
        text = 'not a .py, .yml, .yaml or .json file'
    else:
        text = f'{type(error).__name__}: {error}'
    if 'does not support to load' in text:  # a _base_ of 'package::...' (OpenMMLab's mim)
        text += (" (a _base_ 'package::path' is read from an installed OpenMMLab package "
                 "only: give the path of the config file, relative to your config's "
                 "folder or absolute, e.g. '../mmsora/configs/dit/....py')")
    where = f' (line {line})' if line else ''
    if culprit and osp.abspath(culprit) != osp.abspath(path):
        return f'cannot load config {path}: its base {_shown_path(culprit)}: {text}{where}'
    return f'cannot load config {path}: {text}{where}'


def _import_custom_modules(custom_imports) -> None:
    """Import a config's ``custom_imports`` (``dict(imports=[...],
    allow_failed_imports=False)``), as mmengine's ``Config.fromfile`` would, from the
    working directory too (OpenMMLab users run the tools from their project root; the
    tools' own folder is on ``sys.path``, not it), each failure in one line: a module
    not found (searched from where), or one that raised while importing (its real error,
    file and line; mmengine's message said to set PYTHONPATH for both). With
    ``allow_failed_imports=True`` a module that cannot be imported is warned about
    and skipped, as mmengine does. A list (or a string) of module names is taken for
    ``imports`` (an ``AttributeError`` traceback before); a dict key other than these
    two is refused by name (``import_modules`` imported nothing, and the type was then
    said to be unknown)."""
    if not custom_imports:
        return
    if isinstance(custom_imports, (str, list, tuple)):
        custom_imports = dict(imports=custom_imports)
    if not isinstance(custom_imports, dict):
        raise UserError(f"custom_imports must be dict(imports=['mypkg.mymodule'], "
                        f'allow_failed_imports=False) or a list of module names, got '
                        f'{custom_imports!r}')
    for key in custom_imports:
        if key not in _CUSTOM_IMPORTS_KEYS:
            close = difflib.get_close_matches(str(key), _CUSTOM_IMPORTS_KEYS, n=1,
                                              cutoff=0.5)
            meant = f'did you mean {close[0]}? ' if close else ''
            raise UserError(f'custom_imports: unknown key {key!r}; {meant}its keys are '
                            "imports=['mypkg.mymodule'] and allow_failed_imports=False")
    imports = custom_imports.get('imports') or []
    imports = [imports] if isinstance(imports, str) else imports
    if not isinstance(imports, (list, tuple)) or not all(isinstance(m, str) for m in imports):
        raise UserError(f'custom_imports: imports must be a list of module names, e.g. '
                        f"['mypkg.mymodule'], got {imports!r}")
    _make_working_dir_importable()
    # mmsora's own classes first: a class of one's own named like one of them (a
    # copied DiT being changed) was registered first, and mmsora's own import then
    # failed deep inside with 'DiT is already registered'
    import mmsora.datasets  # noqa: F401
    import mmsora.diffusion  # noqa: F401
    import mmsora.engine  # noqa: F401
    import mmsora.models  # noqa: F401
    for name in imports:
        _import_custom_module(name, custom_imports.get('allow_failed_imports', False))


# The keys of a config's custom_imports dict (mmengine's import_modules_from_strings).
_CUSTOM_IMPORTS_KEYS = ('imports', 'allow_failed_imports')


def _make_working_dir_importable() -> None:
    """Append the working directory to ``sys.path`` unless it is there (as '' too)."""
    cwd = os.getcwd()
    if not any(osp.abspath(p or os.curdir) == cwd for p in sys.path):
        sys.path.append(cwd)


def _import_custom_module(name, allow_failed: bool) -> None:
    """Import module ``name`` of ``custom_imports``; UserError (or, ``allow_failed``
    and an ImportError, mmengine's warning) saying whether it was not found or raised
    while importing, with its real error and place."""
    import importlib
    import warnings
    try:
        importlib.import_module(name)
    except Exception as e:
        missing = (isinstance(e, ModuleNotFoundError) and e.name
                   and (name == e.name or name.startswith(e.name + '.')))
        if missing:
            reason = (f'no module named {name} (looked for from {os.getcwd()} and '
                      'PYTHONPATH; give its dotted path from a folder on PYTHONPATH)')
        else:
            reason = f'importing {name} failed: {type(e).__name__}: {_error_text(e)}'
            reason += _error_place(e)
            if isinstance(e, KeyError) and 'is already registered' in str(e):
                reason += ('; give your class another name, or register it under one: '
                           "@MODELS.register_module(name='MyDiT')")
        if allow_failed and isinstance(e, ImportError):  # mmengine's warning
            warnings.warn(f'{name} failed to import and is ignored ({reason}).', UserWarning)
            return
        raise UserError(f'custom_imports: {reason}') from e


def _error_text(error) -> str:
    return error.msg if isinstance(error, SyntaxError) else first_line(error)


def _error_place(error) -> str:
    """`` (FILE, line N)``: where ``error`` was raised in the user's code (the last
    frame outside importlib's), or a SyntaxError's own place."""
    import traceback
    if isinstance(error, SyntaxError) and error.filename:
        return f' ({_shown_path(error.filename)}, line {error.lineno})'
    import importlib
    skip = (osp.dirname(importlib.__file__), __file__)
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(('<', *skip))]
    if not frames:
        return ''
    return f' ({_shown_path(frames[-1].filename)}, line {frames[-1].lineno})'


# The reference projects' flags (DiT's and SiT's sample.py / train.py, fast-DiT,
# Open-Sora, diffusers' pipelines) with a different name here: suggested where the
# tool has the target.
FOREIGN_FLAGS = {
    '--ckpt': '--checkpoint', '--num-sampling-steps': '--steps',
    '--sampling-method': '--sampler', '--results-dir': '--work-dir',
    '--global-seed': '--seed', '--resume-from': '--resume', '--ckpt-path': '--checkpoint',
    '--save-dir': '--out', '--per-proc-batch-size': '--batch-size',
    '--guidance-scale': '--cfg-scale', '--num-inference-steps': '--steps',
}
# tools/train.py's own flag: a hint that needs it is shown on tools/train.py alone (a
# learning rate or a checkpoint interval means nothing to the sampling tools).
_TRAIN = '--load-from'
# SiT's objective (its train.py and sample.py share these flags): the config's
# model.diffusion (KEY, example, other values, what it is when sampling: True, the one
# the model was trained with; False, a sampling setting; None, not read).
_SIT_OBJECTIVE = {
    '--path-type': ('path', 'Linear', 'GVP, VP', True),
    '--prediction': ('prediction', 'velocity', 'score, noise', True),
    '--loss-weight': ('loss_weight', 'velocity', 'likelihood: with prediction=score or '
                      'noise only', None),
    '--train-eps': ('train_eps', 'E', '', None),
    '--sample-eps': ('sample_eps', 'E', '', False),
}


def _sit_objective_hints(key, value, others, sampling):
    """tools/train.py's hint for SiT's flag of ``model.diffusion.KEY``, then the
    sampling tools'."""
    setting = f'--cfg-options model.diffusion.{key}={value}'
    if sampling is None:
        return ((_TRAIN, setting + (f' (or {others})' if others else '')),
                ('--cfg-options', f'nothing (model.diffusion.{key} is read in training alone)'))
    trained = ': the one the model was trained with' if sampling else ''
    return ((_TRAIN, setting + (f' (or {others})' if others else '')),
            ('--cfg-options', setting + (f' (or {others}{trained})' if others else '')))


# SiT's sample.py sampler flags (its defaults): options of the sampler here.
_SIT_SAMPLER_OPTIONS = {
    '--atol': 'atol=1e-6 rtol=1e-3 (--sampler ode_dopri5)',
    '--rtol': 'atol=1e-6 rtol=1e-3 (--sampler ode_dopri5)',
    '--diffusion-form': 'diffusion_form=sigma (--sampler sde_euler or sde_heun)',
    '--diffusion-norm': 'diffusion_norm=1.0 (--sampler sde_euler or sde_heun)',
    '--last-step': 'last_step=Mean (or Tweedie, Euler, None: --sampler sde_euler or sde_heun)',
    '--last-step-size': 'last_step_size=0.04 (--sampler sde_euler or sde_heun)',
}
_SIT_LIKELIHOOD = ("model.diffusion.log_likelihood(...) from Python (docs/sit.md, "
                   "'Log-likelihood (ODE)': no tool computes it)")
_STAGE_C_ONE_SET = ('mmsora samples Stage C with one --cfg-scale and --steps, Stage B '
                    'with --cfg-options model.vae.guidance_scale=S model.vae.num_steps=N')
# Their flags with no one flag here: what to give instead, shown where the tool has
# the flag named first (a tuple of such pairs: the first whose flag the tool has).
# Also read for a --cfg-options top-level key of that name (``updates=10``, Stable
# Cascade's config key): :func:`_foreign_key_hint`.
FOREIGN_HINTS = {
    '--ckpt': ('--resume', '--resume CKPT (continue) or --load-from CKPT (new run)'),
    '--ema': ('--no-ema', '--no-ema (EMA weights are the default)'),
    '--global-batch-size': ('--cfg-options', '--cfg-options global_batch_size=N'),
    '--epochs': ('--cfg-options', '--cfg-options train_cfg.max_iters=N (iterations: '
                 'epochs x dataset size / global batch)'),
    # mmengine averages the logged loss over log_processor.window_size steps (50 in
    # default_runtime), not over the logger's interval as DiT's --log-every does
    '--log-every': ('--cfg-options', '--cfg-options default_hooks.logger.interval=N '
                    'log_processor.window_size=N'),
    '--global-seed': ('--cfg-options', '--cfg-options randomness.seed=N'),
    '--num-workers': ('--cfg-options', '--cfg-options train_dataloader.num_workers=N'),
    # DiT's sample.py --image-size picks the checkpoint's size; a DiT's position table
    # makes only that one, which --resolution refuses to change
    '--image-size': (
        ('--resolution', '--resolution S (a DiT makes only the size it was trained at: '
                         'give the run or checkpoint of that size)'),
        ('--cfg-options', '--cfg-options model.denoiser.input_size=S/8 '
                          'model.latent_shape=[4,S/8,S/8] (latents extracted at --image-size '
                          'S)')),
    '--ckpt-every': ('--cfg-options', '--cfg-options default_hooks.checkpoint.interval=N'),
    '--feature-path': ('--cfg-options', '--cfg-options train_dataloader.dataset.data_root=DIR'),
    '--data-path': ('--cfg-options', '--cfg-options train_dataloader.dataset.data_root=DIR'),
    # (--model NAME of DiT's and SiT's scripts: the config of NAME, _model_config)
    '--model': ('--cfg-options', 'a config (configs/dit/dit_xl2_8xb32_400k_imagenet256.py: '
                'DiT-XL/2)'),
    '--vae': ('--cfg-options', '--cfg-options model.vae.pretrained_path=DIR'),
    '--num-classes': ('--cfg-options', '--cfg-options model.num_classes=N '
                      'model.denoiser.num_classes=N'),
    '--tf32': ('--no-tf32', '--no-tf32 (TF32 is on by default)'),
    # SiT: the objective is the config's, and sampling must use the trained one
    **{flag: _sit_objective_hints(*setting) for flag, setting in _SIT_OBJECTIVE.items()},
    **{flag: ('--sampler-options', f'--sampler-options {options}')
       for flag, options in _SIT_SAMPLER_OPTIONS.items()},
    '--likelihood': ('--sampler-options', _SIT_LIKELIHOOD),
    '--reverse': ('--sampler-options', _SIT_LIKELIHOOD),
    # diffusers' Stable Cascade pipelines (their prior_* arguments are Stage C's)
    '--prior-guidance-scale': ('--cfg-scale', f'--cfg-scale ({_STAGE_C_ONE_SET})'),
    '--prior-num-inference-steps': ('--steps', f'--steps ({_STAGE_C_ONE_SET})'),
    '--negative-prompt': ('--cfg-scale', "--cfg-scale alone (no negative prompts here: "
                          "guidance pushes away from the denoiser's null caption, Stable "
                          "Cascade's zeroed one, VideoDiT's learned one)"),
    '--height': ('--resolution', '--resolution HxW'),
    '--width': ('--resolution', '--resolution HxW'),
    '--num-images-per-prompt': ('--num-samples', '--num-samples N (in all: the prompts are '
                                'cycled to N)'),
    # Stable Cascade's training config keys (train/train_c.py's yaml), given as flags or
    # as top-level --cfg-options keys; diffusers' training scripts' flags
    '--lr': (_TRAIN, '--cfg-options optim_wrapper.optimizer.lr=LR'),
    '--learning-rate': (_TRAIN, '--cfg-options optim_wrapper.optimizer.lr=LR'),
    '--batch-size': (_TRAIN, '--cfg-options train_dataloader.batch_size=N (per process) or '
                     'global_batch_size=N (all processes)'),
    '--train-batch-size': (_TRAIN, '--cfg-options train_dataloader.batch_size=N (per '
                           'process)'),
    '--updates': (_TRAIN, '--cfg-options train_cfg.max_iters=N'),
    '--max-train-steps': (_TRAIN, '--cfg-options train_cfg.max_iters=N'),
    '--save-every': (_TRAIN, '--cfg-options default_hooks.checkpoint.interval=N'),
    '--checkpointing-steps': (_TRAIN, '--cfg-options default_hooks.checkpoint.interval=N'),
    '--grad-accum-steps': (_TRAIN, '--cfg-options optim_wrapper.accumulative_counts=K'),
    '--gradient-accumulation-steps': (_TRAIN,
                                      '--cfg-options optim_wrapper.accumulative_counts=K'),
    '--mixed-precision': (_TRAIN, '--amp (bf16 where the GPU has it, else fp16)'),
    '--model-version': (_TRAIN, 'a config under configs/stable_cascade/ (the lite prior, '
                        'stable_cascade_video_lite_1xb1_100k_clips1024.py, or for the full one '
                        'its copy with unet=STAGE_C and pretrained_subfolder=prior)'),
    '--adaptive-loss-weight': (_TRAIN, '--cfg-options model.diffusion.loss_weight=p2 (or none: '
                               "Stable Cascade's adaptive weight is not implemented)"),
    '--ema-beta': (_TRAIN, '--cfg-options custom_hooks.I.momentum=1-beta (the EMAHook at '
                   "index I of the config's custom_hooks: mmengine's momentum is 1 - decay)"),
}
# Other projects' names of the sampling settings (diffusers' pipelines' arguments, DiT's
# sample.py's): a sample_cfg key of theirs is taken for ours, not for a close spelling
# (sample_cfg.guidance_scale was 'did you mean guidance_channels?').
FOREIGN_KEYS = {'guidance_scale': 'cfg_scale', 'num_inference_steps': 'num_steps',
                'num_sampling_steps': 'num_steps', 'sampling_method': 'sampler'}


def _model_config(name):
    """The config of DiT's / SiT's ``--model NAME`` (``SiT-XL/2``), or None for a name
    of another kind. SiT's models are DiT's, trained with SiT's objective."""
    match = re.fullmatch(r'(DiT|SiT)-(S|B|L|XL)/([248])', name or '')
    if not match:
        return None
    family, size, patch = match.groups()
    dit = f'configs/dit/dit_{size.lower()}{patch}_8xb32_400k_imagenet256.py'
    if family == 'DiT':
        return f'a config ({dit}: {name})'
    sit = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
    if (size, patch) == ('XL', '2'):
        return f'a config ({sit}: {name})'
    return f"a config ({sit} with the model.denoiser of {dit}: {name} is DiT-{size}/{patch} " \
           "with SiT's objective)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose 'unrecognized arguments' error names the option
    meant: one spelt with underscores (``--cfg_scale``), a near miss
    (``--num-sample``), or another project's name for it (DiT's ``--ckpt``,
    ``--num-sampling-steps``; SiT's ``--path-type``; diffusers' ``--guidance-scale``).
    Another project's name is looked up before a close spelling (SiT's
    ``--prediction`` is not ``--precision``)."""

    def error(self, message):
        prefix = 'unrecognized arguments: '
        if message.startswith(prefix):
            tokens = message[len(prefix):].split()
            # (the value after a flag too: --model SiT-XL/2)
            hints = [h for h in map(self._meant, tokens, tokens[1:] + [None]) if h]
            if hints:
                message += f' (did you mean {"; ".join(hints)}?)'
        super().error(message)

    def _meant(self, token: str, following: str = None):
        """What ``token`` meant; ``following``: the token after it (a flag's value)."""
        if not token.startswith('--'):
            return None
        flag, equals, value = token.partition('=')
        value = value if equals else (following if following and not following.startswith(
            '--') else None)
        ours = [o for action in self._actions for o in action.option_strings
                if o.startswith('--')]
        dashed = flag.replace('_', '-')
        for guess in (dashed, FOREIGN_FLAGS.get(dashed)):
            if guess in ours and guess != flag:
                return f'{guess} for {flag}'
        hints = FOREIGN_HINTS.get(dashed, ())
        for needs, hint in (hints,) if hints and isinstance(hints[0], str) else hints:
            if needs in ours:
                if dashed == '--model' and _model_config(value):
                    hint = _model_config(value)
                return f'{hint} for {flag}'
        close = difflib.get_close_matches(flag, ours, n=1, cutoff=0.75)
        return f'{close[0]} for {flag}' if close else None


def _foreign_key_hint(key: str, value: str = ''):
    """What to give for another project's setting ``key`` given as a top-level
    --cfg-options key (Stable Cascade's ``updates``, DiT's ``epochs``): the config
    entries of its flag's hint, with ``value`` where the hint is one entry alone
    (``updates=10``: ``set train_cfg.max_iters=10 instead``), or what else to use;
    None where the tables have no such flag."""
    flag = '--' + key.replace('_', '-')
    hints = FOREIGN_HINTS.get(flag, ())
    pairs = [hints] if hints and isinstance(hints[0], str) else list(hints)
    texts = [hint for _, hint in pairs]
    for text in texts:
        if text.startswith('--cfg-options '):
            entries = text[len('--cfg-options '):]
            if value and re.fullmatch(r'[\w.]+=[A-Z]+', entries):  # (one entry, as is)
                entries = f'{entries.partition("=")[0]}={value}'
            return f'set {entries} instead'
    if texts:
        return f'use {texts[0]}'
    return f'use {FOREIGN_FLAGS[flag]}' if flag in FOREIGN_FLAGS else None


def parse_config_and_preset(parser, argv=None, dest: str = 'fsdp',
                            const: str = 'fsdp'):
    """``parser.parse_args(argv)`` for a tool with a positional ``config`` (declared
    ``nargs='?'``) and an option whose value may be left out (``--fsdp [PRESET]``).
    Given before the config (``--fsdp CONFIG``), that option takes the config as its
    value and leaves none: a file with a ``model`` there is taken back as the config,
    the option getting ``const``."""
    args = parser.parse_args(argv)
    if args.config is None:
        value = getattr(args, dest)
        if value and osp.isfile(value) and 'model' in load_config(value):
            args.config = value
            setattr(args, dest, const)
        else:
            parser.error('the following arguments are required: config')
    return args


def _parse_value(text):
    """A --cfg-options value as mmengine's ``DictAction`` reads it (numbers, True /
    False, None, ``a,b`` and ``[a,b]`` lists, ``(a,b)`` tuples, nested), except that
    before, it deleted every space (``/a/feat copy`` became ``/a/featcopy``) and
    split any string at its commas, quoted or not (``"/a/feat,copy"`` became a list).
    Now a value in matching quotes (``'k="/a b,c"'`` in a shell) is that exact
    string unless it reads as a number, True / False / None or a bracketed list or
    tuple (kept as mmengine reads them: its help writes ``key="[a,b]"``), an entry
    keeps its inner spaces (only those around it go), and a comma inside quotes (one
    that opens an entry: not an apostrophe inside one) does not split. ``dict(...)``
    is refused (ValueError)."""
    from mmengine.config import DictAction
    text = text.strip()
    if _quoted(text):  # an exact string, unless it reads as a number, True / False /
        inner = text[1:-1]  # None or a bracketed list or tuple, as mmengine took
        bracketed = inner[:1] + inner[-1:] in ('[]', '()')  # those ('"[a,b]"', '"1e-4"')
        value = DictAction._parse_int_float_bool(inner) if not bracketed else None
        if bracketed:
            return _parse_value(inner)
        if isinstance(value, float) and not math.isfinite(value):
            return inner  # a quoted 'nan' / 'inf' is that string
        return value if not isinstance(value, str) else inner
    bare = text.strip('\'"')  # mmengine drops stray quotes at the ends
    is_tuple = bare.startswith('(') and bare.endswith(')')
    if is_tuple or (bare.startswith('[') and bare.endswith(']')):
        entries = _split_entries(bare[1:-1])
    elif ',' in text:
        entries = _split_entries(text)
        if len(entries) == 1:  # no comma outside brackets: dict(a=1,b=2), f(x,y)
            raise ValueError(f'not a value: {text}')
    elif re.fullmatch(r'dict\(.*\)', bare):
        raise ValueError(f'not a value: {text}')
    else:
        return DictAction._parse_int_float_bool(bare)
    values = [_parse_value(entry) for entry in entries]
    return tuple(values) if is_tuple else values


def _quoted(text: str) -> bool:
    """Whether ``text`` is one string in matching quotes: ``"a b"``, not ``"a","b"``."""
    return (len(text) >= 2 and text[0] == text[-1] and text[0] in '\'"'
            and text[0] not in text[1:-1])


def _split_entries(text: str) -> list:
    """``text`` split at its commas outside brackets and quotes (a trailing empty entry
    dropped, as mmengine does: ``1,2,`` is ``[1, 2]``); ValueError for unbalanced
    brackets."""
    entries, depth, start, quote = [], 0, 0, None
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in '\'"' and not text[start:i].strip() and char in text[i + 1:]:
            quote = char  # (at an entry's start only: an apostrophe inside, O'Brien)
        elif char in '([':
            depth += 1
        elif char in ')]':
            depth -= 1
            if depth < 0:
                raise ValueError(f'unbalanced brackets in {text}')
        elif char == ',' and depth == 0:
            entries.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f'unbalanced brackets in {text}')
    if start < len(text):
        entries.append(text[start:])
    return entries


# Top-level keys the tools or mmengine's Runner read when a config sets them (most
# configs do not): a --cfg-options key two edits from one of them is a typo too.
OPTIONAL_TOP_LEVEL = (
    'global_batch_size', 'sample_cfg', 'strategy', 'model_wrapper_cfg',
    'find_unused_parameters', 'evaluation', 'val_dataloader', 'val_cfg', 'val_evaluator',
    'test_dataloader', 'test_cfg', 'test_evaluator', 'auto_scale_lr', 'experiment_name',
    'param_scheduler', 'custom_hooks', 'log_processor', 'visualizer')


def known_top_level() -> set:
    """The top-level keys that mean something to the tools or to mmengine's Runner /
    FlexibleRunner (their arguments): what a key one typo off is compared with."""
    import inspect

    from mmengine.runner import FlexibleRunner, Runner
    known = {'_base_', 'custom_imports', 'runner_type', *OPTIONAL_TOP_LEVEL}
    for runner in (Runner, FlexibleRunner):
        known.update(inspect.signature(runner.__init__).parameters)
    return known - {'self', 'cfg'}


def apply_cfg_options(cfg, options, schedule_note: bool = True):
    """Apply ``KEY=VALUE`` overrides (mmengine's --cfg-options syntax); an index
    into a list may count from the end (``param_scheduler.-1.end``; before, that was a
    malformed entry).

    ``options`` may also be a dict of keys and Python values (``init_model``'s
    ``cfg_options={'a.b': 1}``): taken as they are, with the same checks.

    Raises:
        UserError: naming the malformed option or the key that cannot be set.
    """
    updates, given, written = {}, {}, {}
    python = isinstance(options, dict)  # (they went through text: a dict value failed,
    for option in (options.items() if python else options):  # '2024' became 2024)
        if python:
            key, parsed = option
            shown, well_formed = f'{key}={parsed!r}', isinstance(key, str)
        else:
            key, sep, value = option.partition('=')
            shown, well_formed = option, bool(sep)
        if not well_formed or not key or not all(re.fullmatch(r'\w*|-\d+', part)
                                                 for part in key.split('.')):
            raise UserError(f'malformed --cfg-options entry {shown!r}: expected KEY=VALUE, '
                            'e.g. train_cfg.max_iters=1000')
        if not python:
            try:
                parsed = _parse_value(value)
            except (AssertionError, RecursionError, ValueError) as e:
                raise UserError(f'cannot parse the value of --cfg-options {key}: {value!r} '
                                '(use numbers, strings, [lists] or (tuples); quote a string '
                                'with commas or spaces: \'KEY="a, b"\')') from e
        if _non_finite(parsed):  # the dumped config said max_norm=inf: NameError on load
            raise UserError(f'--cfg-options {shown}: a config cannot hold inf or nan '
                            '(the work dir\'s dumped config would not load again for infer '
                            'or --resume): give a large number such as 1e9' +
                            ('' if python else f', or quote a string: \'{key}="{value}"\''))
        resolved = _resolve_negative_indices(cfg, key)
        updates[resolved], given[resolved], written[resolved] = parsed, key, shown
    if schedule_note:
        _note_schedule_left_behind(cfg, updates)
    for key, value in updates.items():
        shown = given[key]
        parent_path, _, leaf = key.rpartition('.')
        parts = parent_path.split('.') if parent_path else []
        if not parts:
            _refuse_spent_variable(cfg, key, value)
        # mmengine adds any new key. Checked for typos: each dict on the path (a new one
        # there, a hook config without a type say, fails far away) and a top-level leaf
        # (set and never read); a new leaf inside a dict is an option its class checks.
        walk = parts or [leaf]
        node = cfg
        for depth, part in enumerate(walk):
            if isinstance(node, (list, tuple)):
                _check_list_step(shown, walk[:depth], node, part,
                                 key.split('.')[depth + 1:], value)
            if isinstance(node, (list, tuple)) and part.isdigit():  # mmengine: an index
                if int(part) >= len(node):
                    raise UserError(f'--cfg-options {shown}: {".".join(parts[:depth])} has '
                                    f'{len(node)} entries, no [{part}]')
                child = node[int(part)]
            else:
                child = node.get(part) if hasattr(node, 'get') else None
            if child is None:
                # A key set to None (e.g. model.text_encoder) is filled in as before.
                names = list(node.keys()) if hasattr(node, 'keys') else []
                if depth == 0:  # also what the tools and the Runner read when set
                    names += sorted(known_top_level() - set(names))
                meant = min(names, key=lambda name: _edits(part, name), default=part)
                if part not in names and len(part) > 4 and _edits(part, meant) <= 2:
                    above = '.'.join(walk[:depth] + [''])
                    raise UserError(f'--cfg-options {shown}: the config has no '
                                    f'{above}{part}; did you mean {above}{meant}?')
                new_top = not parts and part not in names
                inside = _paths_ending_in(cfg, part) if new_top else []
                if new_top and part in FOREIGN_KEYS:  # (diffusers' guidance_scale=4)
                    inside += [f'sample_cfg.{FOREIGN_KEYS[part]}']
                if inside:  # set at the top and never read: the run ignored it
                    raise UserError(f'--cfg-options {shown}: the config has no top-level '
                                    f'{part} (it would be set and never read); did you mean '
                                    f'{" or ".join(inside[:3])}?')
                if new_top:
                    _refuse_new_top_level_key(written[key], part)
                break
            node = child
        else:
            if parts and isinstance(node, (list, tuple)):
                _check_list_step(shown, parts, node, leaf, [], value)
        if parts and parts[-1] == 'sample_cfg' and leaf in FOREIGN_KEYS:
            # (a sampler's option, for all the sampling check knew: 'did you mean
            # guidance_channels?')
            raise UserError(f'--cfg-options {written[key]}: the sampling settings have no '
                            f'{leaf} (another project\'s name); did you mean '
                            f'{parent_path}.{FOREIGN_KEYS[leaf]}?')
        if parent_path and not hasattr(node, 'get') and not (
                isinstance(node, (list, tuple)) and leaf.isdigit()
                and int(leaf) < len(node)):
            raise UserError(f'--cfg-options {shown}: {parent_path} is not a dict in the config')
        try:
            cfg.merge_from_dict({key: value})
        except Exception as e:
            raise UserError(f'--cfg-options {shown}={value!r}: {e}') from e
    if any(key.split('.')[0] == 'custom_imports' for key in updates):
        # imported with the config file's: one given here was dumped with the run but
        # never imported (a typo or a module that fails passed without a word)
        _import_custom_modules(cfg.get('custom_imports'))
    return cfg


def _refuse_new_top_level_key(written: str, key: str) -> None:
    """A top-level ``key`` that the config does not have, and that neither the tools
    nor the Runner read: set, dumped with the run and never read (Stable Cascade's
    ``updates=10`` trained the config's length). Refused where it is another project's
    setting (the foreign tables say what to give); any other is noted, as a key that
    only code of one's own (a hook of ``custom_imports``) can read."""
    hint = _foreign_key_hint(key, written.partition('=')[2])
    if hint:
        raise UserError(f'--cfg-options {written}: the config has no top-level key {key!r} '
                        f'(it would be set and never read); {hint}')
    note(f'--cfg-options {written}: the config has no top-level key {key!r}; it is added, '
         'and only code of your own that reads it sees it', once=True)


def _paths_ending_in(cfg, name: str, depth: int = 3) -> list:
    """The dotted paths of ``cfg``'s entries named ``name`` inside its sections, up to
    ``depth`` levels down (``max_iters`` -> ``['train_cfg.max_iters']``)."""
    return [path for path, _ in _entries_named(cfg, name, depth)]


def _entries_named(cfg, name: str, depth: int = 3) -> list:
    """``[(path, value)]`` of the entries :func:`_paths_ending_in` names."""
    found = []

    def walk(node, path, left):
        if not hasattr(node, 'items') or not left:
            return
        for key, value in node.items():
            if key == name and path:
                found.append((f'{path}.{key}', value))
            walk(value, f'{path}.{key}' if path else key, left - 1)
    walk(cfg, '', depth)
    return found


def _non_finite(value) -> bool:
    """Whether a parsed --cfg-options value holds inf or nan (in a list or tuple too)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, tuple)) and any(_non_finite(v) for v in value)


def _resolve_negative_indices(cfg, key: str) -> str:
    """``key`` with each index counted from the end (``param_scheduler.-1.end``) made
    the index from the start that mmengine's merge takes (``param_scheduler.1.end``
    for two schedulers). Before, a negative index was 'malformed'."""
    parts = key.split('.')
    node = cfg
    for i, part in enumerate(parts):
        if part.startswith('-'):
            above = '.'.join(parts[:i])
            if not isinstance(node, (list, tuple)):
                raise UserError(f'--cfg-options {key}: {part} is an index, but '
                                f'{above or "the config"} is not a list')
            if -int(part) > len(node):
                raise UserError(f'--cfg-options {key}: {above} has {len(node)} entries, '
                                f'no [{part}]')
            parts[i] = str(len(node) + int(part))
        if isinstance(node, (list, tuple)):
            index = int(parts[i]) if parts[i].isdigit() else len(node)
            node = node[index] if index < len(node) else None
        else:
            node = node.get(parts[i]) if hasattr(node, 'get') else None
    return '.'.join(parts)


def _check_list_step(shown, path_parts, sequence, part, rest, value) -> None:
    """Refuse a key that goes into a list or tuple where mmengine cannot follow it.
    Before: into one of plain values (``model.latent_shape.0=4``), mmengine's long
    'cannot inherit from base ... set `_delete_=True`'; a name where an index belongs
    (``param_scheduler.first.end``), 'no param_scheduler.first; did you mean
    param_scheduler.first?'; a whole entry of a list of dicts (``custom_hooks.0=5``),
    "'int' object has no attribute 'items'"."""
    path = '.'.join(path_parts)
    kind = 'a tuple' if isinstance(sequence, tuple) else 'a list'
    if not all(isinstance(entry, dict) for entry in sequence):
        whole = list(sequence)
        if part.isdigit() and int(part) < len(whole) and not rest:
            whole[int(part)] = value
        plain = tuple(sequence) if isinstance(sequence, tuple) else list(sequence)
        raise UserError(f'--cfg-options {shown}: {path} is {kind} {plain!r}: '
                        f'give it whole, e.g. {path}={_literal(whole)}')
    if not part.isdigit():
        example = '.'.join([path, '0', *(rest or ['KEY'])])
        raise UserError(f'--cfg-options {shown}: {path} is {kind}: give an index, '
                        f'e.g. {example}')
    if not rest and int(part) < len(sequence):
        raise UserError(f'--cfg-options {shown}: {path}.{part} is a dict: set its keys '
                        f'(e.g. {path}.{part}.KEY=VALUE) or give {path} whole')


def _literal(value) -> str:
    """``value`` written as a --cfg-options value (no spaces): ``[4,8,8]``."""
    if isinstance(value, (list, tuple)):
        inner = ','.join(_literal(entry) for entry in value)
        return f'({inner})' if isinstance(value, tuple) else f'[{inner}]'
    if isinstance(value, str) and not re.fullmatch(r'[\w./:+-]*', value):
        return f'"{value}"'
    return str(value)


def is_launch_rank0() -> bool:
    """Whether this process is rank 0 of its launch (torchrun's RANK, srun's
    SLURM_PROCID; a lone process is), read before any process group exists: for the
    notes a tool prints once, not once per process."""
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0'


_NOTED = set()


def note(text: str, once: bool = False) -> None:
    """Print ``note: TEXT`` on standard error, once per launch (rank 0's); ``once``:
    not again in this process (a config the tool loads twice)."""
    if once and text in _NOTED:
        return
    _NOTED.add(text)
    if is_launch_rank0():
        print(f'note: {text}', file=sys.stderr, flush=True)


def is_first_on_machine() -> bool:
    """Whether this process is the first of its machine in a launch (torchrun's
    LOCAL_RANK, srun's SLURM_LOCALID; a lone process is): for a mistake every process
    of a launch finds alike (the config's), said once per machine, not by each."""
    if 'RANK' in os.environ:  # torchrun (tools/train.py sets LOCAL_RANK='0' otherwise)
        return os.environ.get('LOCAL_RANK', '0') == '0'
    return os.environ.get('SLURM_LOCALID', '0') == '0'


def torchrun_processes() -> int:
    """How many processes torchrun started this one among (its WORLD_SIZE; 1 without
    torchrun)."""
    world = os.environ.get('WORLD_SIZE', '1')
    return int(world) if world.isdigit() else 1


def check_torchrun_launcher(launcher: str) -> None:
    """A sampling tool under torchrun without ``--launcher``: every process sampled
    every item into the same files (one stopped on another's .tmp.npz)."""
    world = torchrun_processes()
    if launcher == 'none' and world > 1:
        raise UserError(f'started as one of {world} torchrun processes without --launcher: '
                        'add --launcher pytorch (each process then samples its share)')


def _note_schedule_left_behind(cfg, updates) -> None:
    """A shorter or longer ``train_cfg.max_iters`` leaves the learning-rate schedule
    where it was (its ``end`` took the old length when the config was read): said on
    stderr, naming the entries to set as well, unless they are set too."""
    new = updates.get('train_cfg.max_iters')
    old = (cfg.get('train_cfg') or {}).get('max_iters')
    left = _schedule_left_behind(cfg, old, new, set_paths=updates)
    if left:
        note(f'--cfg-options train_cfg.max_iters={new}: the schedule still ends at {old}, '
             f'the config\'s length; for one that ends with the run set {" ".join(left)} '
             'too')


def _schedule_left_behind(cfg, old, new, set_paths=()) -> list:
    """``['param_scheduler.0.end=NEW', ...]``: the schedulers of ``cfg`` whose ``end``
    (or ``T_max``) is the old run length ``old`` where the run is now ``new`` long,
    leaving out ``set_paths`` and those starting after the run's end (never acting)."""
    if type(new) is not int or type(old) is not int or new == old:
        return []
    left = []
    schedulers = cfg.get('param_scheduler') or []
    single = isinstance(schedulers, dict)  # mmengine takes one scheduler as a dict
    for i, sched in enumerate([schedulers] if single else schedulers):
        for field in ('end', 'T_max'):
            path = f'param_scheduler.{field}' if single else f'param_scheduler.{i}.{field}'
            if (isinstance(sched, dict) and sched.get(field) == old and path not in set_paths
                    and (sched.get('begin') or 0) < new):
                left.append(f'{path}={new}')
    return left


def _spent_entries(cfg, key, old) -> list:
    """``[(path, equal)]``: the entries of ``cfg`` that took the top-level variable
    ``key``'s value ``old`` when the config was read (a path variable, ``data_root``:
    entries equal to it or below it; a length, the demo's ``max_iters``: entries equal
    to it), or ``[]`` for a variable of another kind."""
    path_like = isinstance(old, str) and old and key.endswith(('root', 'dir', 'path', 'file'))
    # (a length variable: the demo's max_iters, which the loop and the schedule took)
    length = (type(old) is int and key.endswith(('_iters', '_epochs')))
    found = []
    if not (path_like or length):
        return found

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f'{path}.{k}' if path else k)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f'{path}.{i}')
        elif length and type(node) is int and path != key and node == old and \
                path.startswith(('train_cfg.', 'param_scheduler')):  # (not an interval
            found.append((path, True))  # that happens to hold the same number)
        elif path_like and isinstance(node, str) and path != key and (
                node == old or node.startswith(old.rstrip('/') + '/')):
            found.append((path, node == old))

    walk(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg, '')
    return found


def _listed(paths) -> str:
    return f'{", ".join(paths[:3])}{", ..." if len(paths) > 3 else ""}'


def _refuse_spent_variable(cfg, key, value) -> None:
    """A top-level path variable (``data_root``) is spent when the config is read:
    entries built from it (``train_dataloader.dataset.data_root``) keep the old path,
    and setting it afterwards changes nothing. Refused, naming those entries.

    So is one that no entry took at all: a derived config (README's fast-DiT one)
    sets ``train_dataloader.dataset.data_root`` itself and leaves the base's
    ``data_root`` behind, and ``data_root=/x`` trained on the old path while the
    dumped config said ``/x``. Refused where entries of the sections bear its name
    and the tools or the Runner do not read it at the top (``work_dir``)."""
    old = cfg.get(key)
    found = _spent_entries(cfg, key, old) if value != old else []
    if not found and key in cfg and value != old and key not in known_top_level():
        entries = _entries_named(cfg, key, depth=5)
        named = [path for path, _ in entries]
        if any(held != value for _, held in entries):
            raise UserError(f'--cfg-options {key}={value}: no entry of the config took its '
                            f'value from the variable {key} ({_listed(named)} '
                            f'{"holds" if len(named) == 1 else "hold"} a value of '
                            f'{"its" if len(named) == 1 else "their"} own), so setting it '
                            f'changes nothing: set {named[0]}={value} instead')
    if found:
        # the example: the loop's length where it took the variable (not, say, a
        # checkpoint interval that happened to equal it)
        path, same = next((f for f in found if f[0] == 'train_cfg.max_iters'), found[0])
        example = f'{path}={value if same else "..."}'
        raise UserError(f'--cfg-options {key}={value}: {key} is a variable the config '
                        f'used when it was read ({_listed([p for p, _ in found])} took its '
                        f'value); setting it now changes nothing: set those instead, e.g. '
                        f'{example}')


def _note_variables_left_in_base(path, cfg) -> None:
    """The same trap in a config file: a child that sets ``data_root = '/mine'`` over a
    base whose entries were built from the base's own ``data_root`` (OpenMMLab's
    configs work this way) leaves those entries at the base's path, and the run read
    the base's data, or failed after the Runner's start-up on a path the child never
    names. A note naming the entries (a child may mean it); and one for an entry whose
    type the child changed (:func:`_note_type_changes`)."""
    from mmengine.config import Config
    try:
        bases = [Config._get_cfg_path(b, path)[0] for b in Config._get_base_files(path)
                 if '::' not in b]
        base_cfgs = [Config.fromfile(b, import_custom_modules=False) for b in bases]
    except Exception:
        return
    for base_path, base in zip(bases, base_cfgs):
        _note_type_changes(path, base_path, base.to_dict(), cfg.to_dict())
        schedule_noted = False
        for key in base.keys():
            old, new = base.get(key), cfg.get(key)
            if key not in cfg or new == old or type(new) is not type(old):
                continue
            found = [p for p, _ in _spent_entries(cfg, key, old)]
            if found:
                schedule_noted |= any(p.startswith('param_scheduler') for p in found)
                note(f'{_shown_path(path)} sets {key}={new!r}, but {_listed(found)} still '
                     f'{"holds" if len(found) == 1 else "hold"} the value of {key} in '
                     f'{_shown_path(base_path)} ({old!r}): a base\'s entries took its '
                     'variables when it was read; set them in your config too', once=True)
        old_iters = (base.get('train_cfg') or {}).get('max_iters')
        new_iters = (cfg.get('train_cfg') or {}).get('max_iters')
        # (a schedule of the child's own is meant; one noted above is not said twice)
        if not schedule_noted and base.get('param_scheduler') == cfg.get('param_scheduler'):
            left = _schedule_left_behind(cfg, old_iters, new_iters)
            if left:
                note(f'{_shown_path(path)} sets train_cfg.max_iters={new_iters}, but the '
                     f'schedule of {_shown_path(base_path)} still ends at {old_iters}, its '
                     f'length; for one that ends with the run set {" ".join(left)} in your '
                     'config too (or a param_scheduler of your own)', once=True)


# Keys mmengine's Runner and builders read beside a registered class's arguments (an
# optimizer wrapper's constructor and paramwise_cfg, a scheduler's
# convert_to_iter_based, a hook's priority, a visualizer's name).
READ_BESIDE_THE_CLASS = ('_scope_', 'priority', 'constructor', 'paramwise_cfg',
                         'convert_to_iter_based', 'name')


def _note_type_changes(path, base_path, base, merged, where='') -> None:
    """A child's entry of another ``type`` than its base's is merged into the base's
    (mmengine), keeping the base's other keys: a dataset turned from
    PackedLatentDataset into a class of one's own kept ``sample_posterior`` and failed
    with an unknown key naming no base. Noted with the keys kept and ``_delete_``."""
    if isinstance(base, dict) and isinstance(merged, dict):
        kind, was = merged.get('type'), base.get('type')
        if isinstance(kind, str) and isinstance(was, str) and kind != was:
            kept = [k for k in base if k not in ('type', *READ_BESIDE_THE_CLASS)
                    and k in merged and merged[k] == base[k]]
            taken = _arguments_of(kind)
            # only keys the new class does not take (a same value given again beside
            # _delete_=True looks kept too, and is fine)
            kept = [k for k in kept if taken is not None and k not in taken]
            if kept:
                note(f'{_shown_path(path)} changes {where} from {was} (in '
                     f'{_shown_path(base_path)}) to {kind} and keeps the base entry\'s '
                     f'{", ".join(kept)}, which {kind} does not take: mmengine merges an '
                     'entry into the base\'s; to start it afresh, give it _delete_=True',
                     once=True)
            return
        for key, value in merged.items():  # (a list is replaced whole: nothing kept)
            if key in base:
                _note_type_changes(path, base_path, base[key], value,
                                   f'{where}.{key}' if where else key)


def _arguments_of(class_name):
    """The arguments the registered class ``class_name`` takes by name, or None where
    that is not known (not registered, or it takes ``**kwargs`` onwards)."""
    import mmsora.registry as registries
    for name in registries.__all__:  # (their locations are imported on a lookup)
        try:
            getattr(registries, name).get(class_name)
        except Exception:
            pass
    cls = _find_registered_class(class_name)
    if cls is None:
        return None
    from mmsora.utils.config_keys import accepted_arguments
    try:
        names, complete = accepted_arguments(cls)
    except (TypeError, ValueError):  # no signature
        return None
    return set(names) if complete else None


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: the fewest one-character insertions, deletions or
    substitutions that turn ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


# What a path the user gave can run into (FileNotFoundError has its own message).
_PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_NOT_REGISTERED = re.compile(r'(\S+) is not in the (\S+)::(.+?) registry')
_UNEXPECTED_KWARG = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
_UNEQUAL_STACK = 'stack expects each tensor to be equal size'
_WORKER_STACK = 'Trying to resize storage that is not resizable'
_ONE_SHAPE = (': a batch stacks them, so each key needs one shape in every item (crop or '
              'resize them to one size)')
_MISSING_ARGS = re.compile(r"(\w+)\.__init__\(\) missing \d+ required (?:positional |keyword-only )?"
                           r"arguments?: (.+)$", re.M)


def _registry_names(scope_name):
    import mmsora.registry as registries
    for name in registries.__all__:
        registry = getattr(registries, name)
        if registry.name == scope_name:
            names, node = set(), registry
            while node is not None:
                names.update(node.module_dict)
                node = node.parent
            return sorted(names)
    return []


def _registered(class_name):
    """``(registry, class)`` of the (mmsora or mmengine, through the parents) registry
    that holds ``class_name``, or ``(None, None)``."""
    import mmsora.registry as registries
    for name in registries.__all__:
        node = getattr(registries, name)
        while node is not None:
            if class_name in node.module_dict:
                return node, node.module_dict[class_name]
            node = node.parent
    return None, None


def _find_registered_class(class_name):
    return _registered(class_name)[1]


def _registered_subclasses(class_name):
    """Registered classes with a base named ``class_name`` (an unregistered base)."""
    import mmsora.registry as registries
    found = []
    for name in registries.__all__:
        for cls in getattr(registries, name).module_dict.values():
            if isinstance(cls, type) and class_name in (b.__name__ for b in cls.__mro__[1:]):
                found.append(cls)
    return found


def unknown_type_message(obj_type: str, registry_name: str, scope: str = None) -> str:
    """``unknown type TYPE in the REGISTRY registry; did you mean ...?``: the registry
    that does hold TYPE (a class registered in the wrong one) comes first, then close
    names; without either, where a class of one's own gets registered
    (``custom_imports``). ``scope``: the scope of the registry that built it (mmengine's
    message says it): a type of mmsora's built from mmengine's root registry is a
    config without ``default_scope`` (it was 'it is registered in the model registry':
    both are named 'model'). A scoped type (``myproj.MyDenoiser``) gets close names of
    that scope's registry."""
    holder = _registered(obj_type)[0]
    if (holder is not None and scope not in (None, 'mmsora') and holder.scope == 'mmsora'
            and holder.name == registry_name):
        which = ('the config has no default_scope' if scope == 'mmengine' else
                 f"default_scope is {scope!r}, whose registry does not reach mmsora's")
        return (f'unknown type {obj_type!r} in the {scope}::{registry_name} registry: '
                f"{which}; set default_scope = 'mmsora' (or inherit "
                'configs/_base_/default_runtime.py)')
    elsewhere = holder.name if holder is not None else None
    if '.' in obj_type and holder is None:
        scoped = _scoped_type_hint(obj_type, registry_name)
        if scoped:
            return f'unknown type {obj_type!r} in the {registry_name} registry; {scoped}'
    close = difflib.get_close_matches(obj_type, _registry_names(registry_name), n=3)
    if elsewhere:
        hint = f'; it is registered in the {elsewhere} registry'
    elif close:
        hint = f'; did you mean {", ".join(close)}?'
    else:
        hint = ('; a class of your own is registered when its module is imported: list '
                'the module in the config\'s custom_imports (README, "Your own modules")')
    return f'unknown type {obj_type!r} in the {registry_name} registry{hint}'


def _scoped_type_hint(obj_type: str, registry_name: str) -> str:
    """'did you mean SCOPE.NAME?' for a scoped type (``myproj.MyDenoser``) close to a
    name of that scope's registry named ``registry_name``, 'SCOPE has no ... registry'
    for a scope not found; '' where the scope's registry has no close name."""
    import mmsora.registry as registries
    scope, name = obj_type.split('.', 1)
    root = next((getattr(registries, r) for r in registries.__all__
                 if getattr(registries, r).name == registry_name), None)
    while root is not None and root.parent is not None:
        root = root.parent
    if root is None:
        return ''
    found = root if root.scope == scope else root._search_child(scope)
    if found is None:
        return (f"no {registry_name} registry has the scope {scope!r} (is the module "
                "defining it in the config's custom_imports?)")
    close = difflib.get_close_matches(name, list(found.module_dict), n=3)
    return f'did you mean {", ".join(f"{scope}.{c}" for c in close)}?' if close else ''


def unknown_key_message(class_name, key, skip=(), names=None):
    """``unknown config key KEY for CLASS; did you mean ...?`` for a registered class
    (``skip``: its arguments that are not the config's to give; ``names``: the keys it
    takes, where the caller knows them better than its signature tells)."""
    import inspect
    if names is None:
        cls = _find_registered_class(class_name)
        # A base class (SampleMetric) gets the keys its registered subclasses (FID) pass
        # on: the names to suggest are theirs too.
        classes = [cls] if cls is not None else _registered_subclasses(class_name)
        names = (name for c in classes for name, p in inspect.signature(c).parameters.items()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
    params = list(dict.fromkeys(name for name in names if name not in skip))
    close = difflib.get_close_matches(key, params, n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else (
        f'; it takes {", ".join(params)}' if params else '')
    return f'unknown config key {key!r} for {class_name}{hint}'


def missing_arguments_message(class_name, names) -> str:
    """``CLASS needs 'a' and 'b' in its config; they are missing``."""
    quoted = [repr(name) for name in names]
    listed = quoted[0] if len(quoted) == 1 else f'{", ".join(quoted[:-1])} and {quoted[-1]}'
    return (f'{class_name} needs {listed} in its config; '
            f'{"it is" if len(names) == 1 else "they are"} missing')


def plural(n: int, word: str) -> str:
    """'1 frame', '5 frames'."""
    return f'{n} {word}{"s" * (n != 1)}'


def first_line(error: BaseException) -> str:
    """An error's message in a few words: its first non-empty line, or the exception's
    class name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def explain_error(exc):
    """A one-line explanation for a user mistake, or None for a real bug."""
    if isinstance(exc, (UserError, RunError)):
        return str(exc)
    import pickle
    if isinstance(exc, pickle.UnpicklingError):  # a checkpoint that holds code
        return str(exc)
    text = str(exc)
    match = _NOT_REGISTERED.search(text)
    if isinstance(exc, KeyError) and match:
        obj_type, scope, registry_name = match.groups()
        return unknown_type_message(obj_type.strip('`\'"'), registry_name, scope)
    match = _UNEXPECTED_KWARG.search(text)
    if isinstance(exc, TypeError) and match:
        built = _built_class(exc, match.group(1))
        if built is None:
            return unknown_key_message(*match.groups())
        import inspect
        params = inspect.signature(built).parameters.values()
        return unknown_key_message(built.__name__, match.group(2), names=[
            p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)])
    match = _MISSING_ARGS.search(text)
    if isinstance(exc, TypeError) and match and _find_registered_class(match.group(1)):
        # a config that leaves out what a registered class needs (not a bug of ours:
        # those call classes that are not built from configs)
        return missing_arguments_message(match.group(1), re.findall(r"'(\w+)'",
                                                                  match.group(2)))
    if isinstance(exc, RuntimeError) and _UNEQUAL_STACK in text and _in_collate(exc):
        got = next(line for line in text.splitlines() if _UNEQUAL_STACK in line)
        got = got[got.index(_UNEQUAL_STACK) + len(_UNEQUAL_STACK):].lstrip(', ').rstrip('.')
        got = got[len('but got '):] if got.startswith('but got ') else got
        return f"the dataset's items differ in shape ({got} of a batch)" + _ONE_SHAPE
    if isinstance(exc, RuntimeError) and _WORKER_STACK in text and 'collate' in text:
        # the same in a DataLoader worker: it stacks into shared memory sized by the
        # first item, and says only this
        return ("the dataset's items differ in shape (a DataLoader worker could not "
                f"stack a batch: '{_WORKER_STACK}')" + _ONE_SHAPE)
    if isinstance(exc, ValueError) and callable(getattr(exc, 'errors', None)) and hasattr(
            exc, 'title'):  # pydantic's (DeepSpeed's config): each field and what is wrong
        try:
            found = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        except Exception:
            found = []
        if found:
            return f'{exc.title}: ' + '; '.join(found[:3])
    if isinstance(exc, (FileNotFoundError, ValueError)) and text:
        # Errors raised in DataLoader workers arrive wrapped, with the worker's
        # traceback in the message: its last line is the original error.
        last = re.sub(r'^[\w.]+(Error|Exception): ', '', text.strip().splitlines()[-1])
        if len(last) > 1 and last[0] == last[-1] and last[0] in '\'"':  # a repr
            last = last[1:-1]
        # what to do, where the error's class says it outside its message (a dataset's
        # unreadable item: the skipping wrapper, which logs the message of each)
        hint = getattr(type(exc), 'hint', None)
        return last + _user_code_place(exc) + (f'; {hint}' if isinstance(hint, str) else '')
    if isinstance(exc, _PATH_ERRORS) and exc.filename:  # an output path through a file
        return f'{exc.strerror}: {exc.filename}' + (
            f' -> {exc.filename2}' if exc.filename2 else '')
    return None


def _tracebacks(exc) -> list:
    """The traceback entries of ``exc``, outermost first."""
    tb, entries = exc.__traceback__, []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    return entries


def _in_collate(exc) -> bool:
    """Whether ``exc`` was raised in torch's default collate (a batch of a dataset's
    items), not in a model's own torch.stack."""
    return any(tb.tb_frame.f_code.co_filename.replace(os.sep, '/').endswith(
        'torch/utils/data/_utils/collate.py') for tb in _tracebacks(exc))


def _built_class(exc, defined_in: str):
    """The class a config's ``type`` was building when ``exc`` was raised, where its
    ``__init__`` is one it inherits from ``defined_in`` (the class Python's TypeError
    names), else None. A class of one's own on a base class was named by the base
    (``unknown config key 'widht' for _MixerBase``). Read from the frame of mmengine's
    ``build_from_cfg``."""
    built = None
    for tb in _tracebacks(exc):
        if tb.tb_frame.f_code.co_name == 'build_from_cfg':
            built = tb.tb_frame.f_locals.get('obj_cls', built)
    if isinstance(built, type) and built.__name__ != defined_in and any(
            c.__name__ == defined_in for c in built.__mro__[1:]):
        return built
    return None


def _user_code_place(exc) -> str:
    """`` (raised in FILE:LINE; ...)`` when the innermost frame of ``exc`` that is not
    a library's (the standard library, site-packages) is in code of one's own, not
    mmsora's (whose messages say what they are about), else ''. A ValueError of one's
    own dataset or denoiser (or of numpy, called from it) was a bare line naming
    neither the file nor the class."""
    import sysconfig
    libraries = tuple(osp.realpath(p) + os.sep for p in {
        sysconfig.get_paths()[k] for k in ('stdlib', 'purelib', 'platlib')})
    package = osp.dirname(osp.dirname(osp.realpath(__file__)))
    ours = (package + os.sep, osp.join(osp.dirname(package), 'tools') + os.sep)
    frames = _tracebacks(exc)
    if any(f.tb_frame.f_code.co_name == 'reraise' for f in frames):
        return ''  # from a DataLoader worker: raised elsewhere (its message says where)
    for frame in reversed(frames):
        path = osp.realpath(frame.tb_frame.f_code.co_filename)
        if path.startswith(libraries) or frame.tb_frame.f_code.co_filename.startswith('<'):
            continue
        if path.startswith(ours):
            return ''
        return (f' (raised in {frame.tb_frame.f_code.co_filename}:{frame.tb_lineno}; '
                'MMSORA_DEBUG=1 shows the traceback)')
    return ''


def add_malloc_option(parser) -> None:
    """``--default-malloc`` of the tools that run models (train, infer, test, benchmark)
    and of text2video."""
    parser.add_argument('--default-malloc', action='store_true',
                        help="on the CPU, leave glibc's malloc as it is (default there: "
                        'it keeps the memory a step frees for the next one instead of '
                        'faulting fresh pages in: faster steps; the peak can be higher, '
                        '+1%% training DiT-S/2, more where steps differ in size)')


def keep_freed_memory_on_cpu(args, on_cpu: bool) -> bool:
    """In a process whose heavy work runs on the CPU (models; text2video's composition),
    keep glibc's freed memory for reuse (``mmsora.engine.strategies.keep_freed_cpu_memory``)
    unless ``--default-malloc`` was given. Returns whether it was set."""
    if not on_cpu or args.default_malloc:
        return False
    from mmsora.engine.strategies import keep_freed_cpu_memory
    return keep_freed_cpu_memory()


def checkpointing_setting(text: str):
    """argparse ``type`` of ``--grad-checkpointing``: ``'selective'`` or a block interval
    K >= 0 (0: none, 1: every block), as the denoisers' ``grad_checkpointing``."""
    import argparse
    if text == 'selective':
        return text
    try:
        k = int(text)
    except ValueError:
        k = -1
    if k < 0:
        raise argparse.ArgumentTypeError(
            f"expected 'selective' or a block interval K >= 0, got {text!r}")
    return k


def device_setting(text: str) -> str:
    """argparse ``type`` of the tools' ``--device``: a torch device (``cpu``, ``cuda``,
    ``cuda:1``, ...) that this machine has."""
    import argparse

    import torch
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(
            f'expected cpu, cuda or cuda:N, got {text!r}') from None
    backend = getattr(torch, device.type, None)
    if device.type != 'cpu' and not (backend and backend.is_available()):
        raise argparse.ArgumentTypeError(f'{text}: no {device.type} device on this machine')
    if (device.type == 'cuda' and device.index is not None
            and device.index >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(
            f'{text}: this machine has {torch.cuda.device_count()} CUDA device(s)')
    return text


def read_user_text(path, option: str) -> str:
    """The text of a file the user names with ``option`` (a prompt file, a caption
    file): UTF-8, a byte-order mark dropped. One that is not UTF-8, or cannot be read,
    is one line naming the option; FileNotFoundError passes through (a caller may take
    a missing file for none)."""
    try:
        with open(path, encoding='utf-8-sig') as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f'{option}: {path} is not UTF-8 text ({e.reason} at byte '
                        f'{e.start}): save it as UTF-8') from None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise UserError(f'{option}: cannot read {path}: {e.strerror or e}') from None


def check_at_least(args, names, least=1) -> None:
    """Refuse an option of ``args`` below its least value, named as it is spelt on the
    command line (``--batch-size must be >= 1, got 0``); an option left unset (None)
    passes. ``names``: option names (``'batch_size'``) that must be at least
    ``least``, or a dict of each name's own least."""
    limits = names if isinstance(names, dict) else dict.fromkeys(names, least)
    for name, lowest in limits.items():
        value = getattr(args, name)
        if value is not None and value < lowest:
            raise UserError(f'--{name.replace("_", "-")} must be >= {lowest}, got {value}')


def check_output_path(path, option: str, folder: bool = False) -> None:
    """Refuse, before the work that ends in writing it, an output ``path`` that
    cannot be written: one whose folder runs into an existing file (``x.jpg/out.json``),
    an existing folder where a file is wanted, or one under a folder this process may
    not write in (read-only, another user's, ``/proc``). ``folder``: ``path`` is a
    folder."""
    if path is None:
        return
    probe = osp.abspath(path if folder else osp.dirname(osp.abspath(path)))
    while not osp.exists(probe):
        probe = osp.dirname(probe)
    if not osp.isdir(probe):
        raise UserError(f'{option} {path}: {probe} is a file, not a folder')
    if not folder and osp.isdir(path):
        raise UserError(f'{option} {path} is a folder; give a file name')
    import tempfile
    try:  # a file with no name where the system allows it (O_TMPFILE): nothing is left
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as e:
        raise UserError(f'{option} {path}: cannot write in {probe} ({e.strerror})') from None


def add_note(exc: BaseException, text: str) -> None:
    """Add ``text`` under ``exc``'s traceback (Python 3.11's ``add_note``; printed to
    stderr at once on 3.10, which has none)."""
    if hasattr(exc, 'add_note'):
        exc.add_note(text)
    else:
        print(text, file=sys.stderr, flush=True)


def check_samples_not_finished(path, option: str = '--out') -> None:
    """Refuse a mass sampling's ``.npz`` that exists: a finished run's (its shards
    are gone once it is written), which the same command run again, or another run's
    ``--out``, sampled over and replaced without a word. (tools/test.py first scores a
    file whose run was stopped while scoring: ``mass_sampling`` keeps its record.)"""
    if path is not None and osp.isfile(path):
        raise UserError(f'{option} {path} exists: the samples of a finished run are not '
                        'sampled over; delete it, or give another name')


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM), with what there is to do next in the tool's words (its
    message); ``exit_code`` is what :func:`run_cli` exits with (130, as a shell
    reports SIGINT; 143 for SIGTERM), and ``quiet`` leaves its line to another
    process (the first of a multi-process run says it)."""

    def __init__(self, message: str = '', exit_code: int = 130, quiet: bool = False):
        super().__init__(message)
        self.exit_code, self.quiet = exit_code, quiet


def run_cli(main):
    """Run ``main()``; print user mistakes as one ``error:`` line and exit 2, and
    Ctrl-C as one ``interrupted`` line (with what to do next, where the tool says it:
    :class:`Interrupted`) and exit 130, as a shell reports SIGINT.

    Set ``MMSORA_DEBUG=1`` to get the full traceback instead.
    """
    try:
        main()
    except KeyboardInterrupt as e:
        from mmsora.utils.dist import abandon_process_group
        abandon_process_group()
        if os.environ.get('MMSORA_DEBUG'):
            raise
        if not getattr(e, 'quiet', False):
            print(f'interrupted{f" {e}" if str(e) else ""}', file=sys.stderr, flush=True)
        return getattr(e, 'exit_code', 130)
    except Exception as e:
        from mmsora.utils.dist import abandon_process_group
        abandon_process_group()  # else gloo may abort at exit over the live group
        message = explain_error(e)
        if message is None or os.environ.get('MMSORA_DEBUG'):
            raise
        print(f'error: {message}', file=sys.stderr)
        for line in getattr(e, '__notes__', ()):  # (add_note's: what to do next)
            print(line, file=sys.stderr)
        return 2
    return 0
