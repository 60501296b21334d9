"""Command-line plumbing shared by tools/: config loading, --cfg-options, and one-line
errors for user mistakes (instead of a traceback)."""
import argparse
import difflib
import os
import os.path as osp
import re
import sys

__all__ = ['UserError', 'RunError', 'Interrupted', 'ArgumentParser', 'load_config',
           'apply_cfg_options', 'run_cli', 'explain_error', 'parse_config_and_preset',
           'add_malloc_option',
           'keep_freed_memory_on_cpu', 'checkpointing_setting', 'device_setting',
           'unknown_key_message', 'unknown_type_message', 'missing_arguments_message',
           'check_output_path', 'first_line', 'is_launch_rank0', 'is_first_on_machine']


class UserError(Exception):
    """A mistake in what the user gave (path, option, config); printed as one line."""


class RunError(Exception):
    """A run stopped for a reason outside the code (full disk, diverging loss);
    printed as one line."""


def load_config(path):
    """Load an mmengine config file, naming it in any error."""
    from mmengine.config import Config
    if not osp.isfile(path):
        raise UserError(f'config file not found: {path}')
    try:
        return Config.fromfile(path)
    except Exception as e:  # syntax errors, bad _base_ paths, ...
        raise UserError(f'cannot load config {path}: {type(e).__name__}: {e}') from e


# The reference projects' flags (DiT's and SiT's sample.py / train.py, fast-DiT,
# Open-Sora) with a different name here: suggested where the tool has the target.
FOREIGN_FLAGS = {
    '--ckpt': '--checkpoint', '--num-sampling-steps': '--steps',
    '--sampling-method': '--sampler', '--results-dir': '--work-dir',
    '--global-seed': '--seed', '--resume-from': '--resume', '--ckpt-path': '--checkpoint',
    '--save-dir': '--out',
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose 'unrecognized arguments' error names the option
    meant: one spelt with underscores (``--cfg_scale``), a near miss
    (``--num-sample``), or another project's name for it (DiT's ``--ckpt``,
    ``--num-sampling-steps``)."""

    def error(self, message):
        prefix = 'unrecognized arguments: '
        if message.startswith(prefix):
            hints = [h for h in map(self._meant, message[len(prefix):].split()) if h]
            if hints:
                message += f' (did you mean {"; ".join(hints)}?)'
        super().error(message)

    def _meant(self, token: str):
        if not token.startswith('--'):
            return None
        flag = token.split('=', 1)[0]
        ours = [o for action in self._actions for o in action.option_strings
                if o.startswith('--')]
        for guess in (flag.replace('_', '-'), FOREIGN_FLAGS.get(flag.replace('_', '-'))):
            if guess in ours and guess != flag:
                return f'{guess} for {flag}'
        close = difflib.get_close_matches(flag, ours, n=1, cutoff=0.75)
        return f'{close[0]} for {flag}' if close else None


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
    from mmengine.config import DictAction
    return DictAction._parse_iterable(text)


# Top-level keys the tools or mmengine's Runner read when a config sets them (most
# configs do not): a --cfg-options key two edits from one of them is a typo too.
OPTIONAL_TOP_LEVEL = (
    'global_batch_size', 'sample_cfg', 'strategy', 'model_wrapper_cfg',
    'find_unused_parameters', 'evaluation', 'val_dataloader', 'val_cfg', 'val_evaluator',
    'test_dataloader', 'test_cfg', 'test_evaluator', 'auto_scale_lr', 'experiment_name',
    'param_scheduler', 'custom_hooks', 'log_processor', 'visualizer')


def apply_cfg_options(cfg, options):
    """Apply ``KEY=VALUE`` overrides (mmengine's --cfg-options syntax).

    Raises:
        UserError: naming the malformed option or the key that cannot be set.
    """
    updates = {}
    for option in options:
        key, sep, value = option.partition('=')
        if not sep or not key or not re.fullmatch(r'[\w.]+', key):
            raise UserError(f'malformed --cfg-options entry {option!r}: expected KEY=VALUE, '
                            'e.g. train_cfg.max_iters=1000')
        try:
            updates[key] = _parse_value(value)
        except (AssertionError, RecursionError, ValueError) as e:
            raise UserError(f'cannot parse the value of --cfg-options {key}: {value!r} '
                            '(use numbers, strings, [lists] or (tuples))') from e
    _note_schedule_left_behind(cfg, updates)
    for key, value in updates.items():
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
            if isinstance(node, (list, tuple)) and part.isdigit():  # mmengine: an index
                if int(part) >= len(node):
                    raise UserError(f'--cfg-options {key}: {".".join(parts[:depth])} has '
                                    f'{len(node)} entries, no [{part}]')
                child = node[int(part)]
            else:
                child = node.get(part) if hasattr(node, 'get') else None
            if child is None:
                # A key set to None (e.g. model.text_encoder) is filled in as before.
                names = list(node.keys()) if hasattr(node, 'keys') else []
                if depth == 0:  # also what the tools and the Runner read when set
                    names += [name for name in OPTIONAL_TOP_LEVEL if name not in names]
                meant = min(names, key=lambda name: _edits(part, name), default=part)
                if part not in names and len(part) > 4 and _edits(part, meant) <= 2:
                    above = '.'.join(walk[:depth] + [''])
                    raise UserError(f'--cfg-options {key}: the config has no '
                                    f'{above}{part}; did you mean {above}{meant}?')
                break
            node = child
        if parent_path and not hasattr(node, 'get') and not (
                isinstance(node, (list, tuple)) and leaf.isdigit()
                and int(leaf) < len(node)):
            raise UserError(f'--cfg-options {key}: {parent_path} is not a dict in the config')
        try:
            cfg.merge_from_dict({key: value})
        except Exception as e:
            raise UserError(f'--cfg-options {key}={value!r}: {e}') from e
    return cfg


def is_launch_rank0() -> bool:
    """Whether this process is rank 0 of its launch (torchrun's RANK, srun's
    SLURM_PROCID; a lone process is), read before any process group exists: for the
    notes a tool prints once, not once per process."""
    return os.environ.get('RANK', os.environ.get('SLURM_PROCID', '0')) == '0'


def is_first_on_machine() -> bool:
    """Whether this process is the first of its machine in a launch (torchrun's
    LOCAL_RANK, srun's SLURM_LOCALID; a lone process is): for a mistake every process
    of a launch finds alike (the config's), said once per machine, not by each."""
    if 'RANK' in os.environ:  # torchrun (tools/train.py sets LOCAL_RANK='0' otherwise)
        return os.environ.get('LOCAL_RANK', '0') == '0'
    return os.environ.get('SLURM_LOCALID', '0') == '0'


def _note_schedule_left_behind(cfg, updates) -> None:
    """A shorter or longer ``train_cfg.max_iters`` leaves the learning-rate schedule
    where it was (its ``end`` took the old length when the config was read): said on
    stderr, naming the entries to set as well, unless they are set too."""
    new = updates.get('train_cfg.max_iters')
    old = (cfg.get('train_cfg') or {}).get('max_iters')
    if type(new) is not int or type(old) is not int or new == old:
        return
    left = []
    schedulers = cfg.get('param_scheduler') or []
    single = isinstance(schedulers, dict)  # mmengine takes one scheduler as a dict
    for i, sched in enumerate([schedulers] if single else schedulers):
        for field in ('end', 'T_max'):
            path = f'param_scheduler.{field}' if single else f'param_scheduler.{i}.{field}'
            if (isinstance(sched, dict) and sched.get(field) == old and path not in updates
                    and (sched.get('begin') or 0) < new):  # (one that starts after the
                # run's end never acts)
                left.append(f'{path}={new}')
    if left and is_launch_rank0():
        print(f'note: --cfg-options train_cfg.max_iters={new}: the schedule still ends at '
              f'{old}, the config\'s length; for one that ends with the run set '
              f'{" ".join(left)} too', file=sys.stderr, flush=True)


def _refuse_spent_variable(cfg, key, value) -> None:
    """A top-level path variable (``data_root``) is spent when the config is read:
    entries built from it (``train_dataloader.dataset.data_root``) keep the old path,
    and setting it afterwards changes nothing. Refused, naming those entries."""
    old = cfg.get(key)
    path_like = isinstance(old, str) and old and key.endswith(('root', 'dir', 'path', 'file'))
    # (a length variable: the demo's max_iters, which the loop and the schedule took)
    length = (type(old) is int and key.endswith(('_iters', '_epochs')))
    if not ((path_like or length) and value != old):
        return
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f'{path}.{k}' if path else k)
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f'{path}.{i}')
        elif length and type(node) is int and path != key and node == old:
            found.append((path, True))
        elif path_like and isinstance(node, str) and path != key and (
                node == old or node.startswith(old.rstrip('/') + '/')):
            found.append((path, node == old))

    walk(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg, '')
    if found:
        # the example: the loop's length where it took the variable (not, say, a
        # checkpoint interval that happened to equal it)
        path, same = next((f for f in found if f[0] == 'train_cfg.max_iters'), found[0])
        example = f'{path}={value if same else "..."}'
        raise UserError(f'--cfg-options {key}={value}: {key} is a variable the config '
                        f'used when it was read ({", ".join(p for p, _ in found[:3])}'
                        f'{", ..." if len(found) > 3 else ""} took its value); setting it '
                        f'now changes nothing: set those instead, e.g. {example}')


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


def _find_registered_class(class_name):
    import mmsora.registry as registries
    for name in registries.__all__:
        node = getattr(registries, name)
        while node is not None:
            if class_name in node.module_dict:
                return node.module_dict[class_name]
            node = node.parent
    return None


def _registered_subclasses(class_name):
    """Registered classes with a base named ``class_name`` (an unregistered base)."""
    import mmsora.registry as registries
    found = []
    for name in registries.__all__:
        for cls in getattr(registries, name).module_dict.values():
            if isinstance(cls, type) and class_name in (b.__name__ for b in cls.__mro__[1:]):
                found.append(cls)
    return found


def unknown_type_message(obj_type: str, registry_name: str) -> str:
    """``unknown type TYPE in the REGISTRY registry; did you mean ...?``"""
    close = difflib.get_close_matches(obj_type, _registry_names(registry_name), n=3)
    hint = f'; did you mean {", ".join(close)}?' if close else ''
    return f'unknown type {obj_type!r} in the {registry_name} registry{hint}'


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
        obj_type, _, registry_name = match.groups()
        return unknown_type_message(obj_type.strip('`\'"'), registry_name)
    match = _UNEXPECTED_KWARG.search(text)
    if isinstance(exc, TypeError) and match:
        return unknown_key_message(*match.groups())
    match = _MISSING_ARGS.search(text)
    if isinstance(exc, TypeError) and match and _find_registered_class(match.group(1)):
        # a config that leaves out what a registered class needs (not a bug of ours:
        # those call classes that are not built from configs)
        return missing_arguments_message(match.group(1), re.findall(r"'(\w+)'",
                                                                  match.group(2)))
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
        return last
    if isinstance(exc, _PATH_ERRORS) and exc.filename:  # an output path through a file
        return f'{exc.strerror}: {exc.filename}' + (
            f' -> {exc.filename2}' if exc.filename2 else '')
    return None


def add_malloc_option(parser) -> None:
    """``--default-malloc`` of the tools that run models (train, infer, test, benchmark)
    and of text2video."""
    parser.add_argument('--default-malloc', action='store_true',
                        help="on the CPU, leave glibc's malloc as it is (default there: "
                        'it keeps the memory a step frees for the next one instead of '
                        'faulting fresh pages in; faster, about the same peak)')


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


def check_output_path(path, option: str, folder: bool = False) -> None:
    """Refuse, before the work that ends in writing it, an output ``path`` that
    cannot be written: one whose folder runs into an existing file (``x.jpg/out.json``),
    or an existing folder where a file is wanted. ``folder``: ``path`` is a folder."""
    if path is None:
        return
    probe = osp.abspath(path if folder else osp.dirname(osp.abspath(path)))
    while not osp.exists(probe):
        probe = osp.dirname(probe)
    if not osp.isdir(probe):
        raise UserError(f'{option} {path}: {probe} is a file, not a folder')
    if not folder and osp.isdir(path):
        raise UserError(f'{option} {path} is a folder; give a file name')


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
        return 2
    return 0
