"""Building the text-to-video backends from a config dict or a command-line spec.

Backends are built from a config dict (``dict(type='EspeakSpeech', voice='en-gb')``)
or from the short command-line spec that :func:`build_backend` reads
(``espeak:en-gb``, ``mmsora:work_dirs/run``). Their registries, SPEECH_BACKENDS and
PICTURE_BACKENDS, are in :mod:`mmsora.registry` with every other one.
"""
from mmsora.registry import PICTURE_BACKENDS, SPEECH_BACKENDS
from mmsora.utils.cli import UserError

__all__ = ['SPEECH_BACKENDS', 'PICTURE_BACKENDS', 'parse_spec', 'build_backend']


def parse_spec(spec, short_names, option):
    """``NAME[:ARG]`` -> a config dict ``dict(type=..., ARG_NAME=ARG)``.

    Args:
        spec (str): ``NAME[:ARG]`` with NAME a key of ``short_names``.
        short_names (dict): NAME -> ``(registered type, argument that ARG fills or
            None, whether ARG is required)``.
        option (str): The command-line option, named in errors.

    Raises:
        UserError: unknown NAME, a missing required ARG, or an ARG given to a backend
            that takes none.
    """
    name, sep, arg = str(spec).partition(':')
    if name not in short_names:
        raise UserError(f'unknown {option} {spec!r}; choose from '
                        + ', '.join(_usage(n, a, r) for n, (_, a, r) in short_names.items()))
    type_name, arg_name, required = short_names[name]
    if (sep and (arg_name is None or not arg)) or (required and not arg):
        raise UserError(f'{option} {spec!r}: write it as {_usage(name, arg_name, required)}')
    cfg = dict(type=type_name)
    if arg:
        cfg[arg_name] = arg
    return cfg


def build_backend(registry, spec, short_names, option, **kwargs):
    """Build a backend from a spec ``NAME[:ARG]`` (see :func:`parse_spec`) or a config
    dict with ``type``; ``kwargs`` are added to its config."""
    cfg = dict(spec) if isinstance(spec, dict) else parse_spec(spec, short_names, option)
    cfg.update(kwargs)
    return registry.build(cfg)


def _usage(name, arg_name, required):
    if arg_name is None:
        return name
    arg = arg_name.upper()
    return f'{name}:{arg}' if required else f'{name}[:{arg}]'
