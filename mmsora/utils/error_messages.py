"""One-line messages for errors a run meets, printed by cli.run_cli instead of a
traceback (explain_error): a type not registered (with the close registered names:
find_registered_class looks a name up in every registry), an unknown or missing
constructor argument, a config value of the wrong type (wrong_type_message), items a
batch cannot stack, a path error, a port in use (port_in_use_message). It imports cli
(UserError, RunError); cli.run_cli imports it when it runs, so the two do not import
each other at load."""
import difflib
import os
import os.path as osp
import re

from mmsora.utils.cli import RunError, UserError

__all__ = ['find_registered_class', 'unknown_type_message', 'unknown_key_message',
           'missing_arguments_message', 'wrong_type_message', 'port_in_use_message',
           'explain_error']


# What a path the user gave can run into (FileNotFoundError has its own message).
_PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_NOT_REGISTERED = re.compile(r'(\S+) is not in the (\S+)::(.+?) registry')
_UNEXPECTED_KWARG = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")
_UNEQUAL_STACK = 'stack expects each tensor to be equal size'
_WORKER_STACK = 'Trying to resize storage that is not resizable'
_ONE_SHAPE = (': a batch stacks them, so each key needs one shape in every item (crop or '
              'resize them to one size)')
_PORT_IN_USE = re.compile(r'port: (\d+).*EADDRINUSE', re.S)
_MISSING_ARGS = re.compile(r"(\w+)\.__init__\(\) missing \d+ required "
                           r"(?:positional |keyword-only )?arguments?: (.+)$", re.M)


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


def find_registered_class(class_name):
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
        cls = find_registered_class(class_name)
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


def wrong_type_message(where: str, wanted: str, value) -> str:
    """``KEY must be WANTED, got VALUE (a TYPE)``: ``where`` the key as the config
    names it (``model.denoiser.depth``), ``wanted`` in words (``a whole number
    (int)``)."""
    return f'{where} must be {wanted}, got {value!r} (a {type(value).__name__})'


def port_in_use_message(exc):
    """``port N (MASTER_PORT) is in use ...; set MASTER_PORT ...`` for torch's
    DistNetworkError of a process group whose rank 0 cannot listen on MASTER_PORT
    (another run holds the port), else None. Under srun rank 0 listens itself (under
    torchrun its agent does, and says so in its own words)."""
    match = _PORT_IN_USE.search(str(exc))
    if type(exc).__name__ != 'DistNetworkError' or not match:
        return None
    from mmsora.utils.dist import free_port
    return (f'port {match.group(1)} (MASTER_PORT) is in use on this machine: another run, '
            'or one that just ended, holds it, and the process group cannot listen on it; '
            f'set MASTER_PORT to a free port (MASTER_PORT={free_port()} is free here now) '
            'and start again')


def explain_error(exc):
    """A one-line explanation for a user mistake, or None for a real bug."""
    if isinstance(exc, (UserError, RunError)):
        return str(exc)
    port_in_use = port_in_use_message(exc)  # (mmengine's own nccl group under srun)
    if port_in_use:
        return port_in_use
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
    if isinstance(exc, TypeError) and match and find_registered_class(match.group(1)):
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
