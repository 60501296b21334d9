"""Reading a config for the tools: a path not found named with the configs meant, a
config's syntax error in one line, custom_imports imported (the working directory
importable), and notes on what a config's ``_base_`` leaves behind (variables its
entries were written with, a type changed under the base's arguments); and
parse_config_and_preset, the tools' CONFIG argument with a strategy preset."""
import difflib
import os
import os.path as osp
import sys

from mmsora.utils.cli import UserError, first_line, note
from mmsora.utils.error_messages import find_registered_class

__all__ = ['load_config', 'import_custom_modules', 'parse_config_and_preset',
           'schedule_left_behind', 'spent_entries', 'listed_paths']


def load_config(path):
    """Load an mmengine config file, naming it in any error.

    Before: a folder given for the config (a work dir) was 'config file not found';
    an error in a ``_base_`` file was reported against the config given (a SyntaxError
    with the base's line number, ``<unknown>`` for its file); and ``custom_imports``
    were imported by mmengine alone: from the folder of the tool (tools/), not the
    working directory, and any failure, a missing module or one that raised inside,
    came out as the same 8 lines telling to set PYTHONPATH. Now the folder, the file
    at fault and the module at fault are named in one line (:func:`import_custom_modules`).
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
    import_custom_modules(cfg.get('custom_imports'))  # (their classes, for the notes)
    _note_variables_left_in_base(path, cfg)
    return cfg


def _close_configs(path) -> str:
    """'; did you mean ...' for a config path not found (:func:`_close_config_paths`)."""
    same = _close_config_paths(path)
    return f"; did you mean {' or '.join(same)}?" if same else ''


def _close_config_paths(path) -> list:
    """Up to 3 configs meant by a path not found: the same file name in another
    folder of configs/ (configs/dit_s2_....py for configs/dit/dit_s2_....py), else close
    names in the folder given and under configs/ of the working directory; files under
    ``_base_`` only for a path under ``_base_``."""
    import glob
    name = osp.basename(path)
    if not name:
        return []
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
    return same[:3]


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
    path = osp.normpath(path)  # (a/./my.py given: a/my.py)
    if culprit and osp.abspath(culprit) != osp.abspath(path):
        if isinstance(error, FileNotFoundError) and not osp.exists(culprit):
            text = f'not found{_close_base_configs(culprit)}'  # a _base_ path's typo
        return f'cannot load config {path}: its base {_shown_path(culprit)}: {text}{where}'
    return f'cannot load config {path}: {text}{where}'


def _close_base_configs(path) -> str:
    """'; did you mean ...' for a ``_base_`` not found, each config named once as the
    error names files (found both from the base's absolute folder and under configs/)."""
    shown = []
    for found in _close_config_paths(path):
        if _shown_path(found) not in shown:
            shown.append(_shown_path(found))
    return f"; did you mean {' or '.join(shown)}?" if shown else ''


def import_custom_modules(custom_imports) -> None:
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


def schedule_left_behind(cfg, old, new, set_paths=()) -> list:
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


def spent_entries(cfg, key, old) -> list:
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


def listed_paths(paths) -> str:
    return f'{", ".join(paths[:3])}{", ..." if len(paths) > 3 else ""}'


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
            found = [p for p, _ in spent_entries(cfg, key, old)]
            if found:
                schedule_noted |= any(p.startswith('param_scheduler') for p in found)
                note(f'{_shown_path(path)} sets {key}={new!r}, but {listed_paths(found)} still '
                     f'{"holds" if len(found) == 1 else "hold"} the value of {key} in '
                     f'{_shown_path(base_path)} ({old!r}): a base\'s entries took its '
                     'variables when it was read; set them in your config too', once=True)
        old_iters = (base.get('train_cfg') or {}).get('max_iters')
        new_iters = (cfg.get('train_cfg') or {}).get('max_iters')
        # (a schedule of the child's own is meant; one noted above is not said twice)
        if not schedule_noted and base.get('param_scheduler') == cfg.get('param_scheduler'):
            left = schedule_left_behind(cfg, old_iters, new_iters)
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
    cls = find_registered_class(class_name)
    if cls is None:
        return None
    from mmsora.utils.config_keys import accepted_arguments
    try:
        names, complete = accepted_arguments(cls)
    except (TypeError, ValueError):  # no signature
        return None
    return set(names) if complete else None
