"""What a checkpoint records of its training (the model config, the objective's
settings, SiT's ``args``) and the comparison with the config it is loaded under: a
run of another objective, schedule or prediction is refused or noted before sampling."""
import copy
import functools
import os
import os.path as osp
from collections.abc import Mapping
from typing import Optional, Sequence

from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.checkpoint_choice import resolve_checkpoint

__all__ = ['config_objective', 'trained_config', 'trained_model_config', 'trained_objective',
           'OBJECTIVE_MEANING',
           'OBJECTIVE_NOTED', 'keyword_defaults', 'constructor_defaults', 'meaning_kind',
           'objective_settings', 'config_denoiser', 'sit_training_args', 'training_file_kind',
           'checkpoint_objective', 'objective_differences', 'said_objective_differences',
           'check_trained_objective']


def config_objective(model) -> Optional[str]:
    """The objective class name of a ``model`` config: its ``diffusion.type`` without
    a scope (``mmsora.GaussianDiffusion``), LatentDiffusion's default when it gives
    none, or None."""
    if not isinstance(model, dict):
        return None
    diffusion = model.get('diffusion') or dict(type='GaussianDiffusion')
    kind = diffusion.get('type') if isinstance(diffusion, dict) else None
    return kind.rpartition('.')[2] if isinstance(kind, str) else None


def trained_config(checkpoint) -> Optional[dict]:
    """The config (a plain dict) of the run that saved an mmengine ``checkpoint``, from
    the config text its ``meta`` holds, or None (not a run's, or text that is not a
    config).

    The text is read without importing its ``custom_imports``: the types are its
    names, whether or not the modules of a run of one's own import here. Before, they
    were imported (mmengine's ``Config.fromstring``), without the working directory
    on ``sys.path``, and a failure gave None: a run's recorded denoiser and objective
    went unchecked, and a wrong model loaded without a word."""
    text = ((checkpoint or {}).get('meta') or {}).get('cfg')
    if not isinstance(text, str):
        return None
    parsed = _parsed_config(text)
    return None if parsed is None else copy.deepcopy(parsed)  # (the caller's to change)


@functools.lru_cache(maxsize=4)
def _parsed_config(text: str) -> Optional[dict]:
    """:func:`trained_config`'s parse of a config text, once per text: a resume's
    checks read the recorded config three times (objective, its settings, the changes
    since)."""
    import tempfile

    from mmengine.config import Config
    # (a file closed before it is read: Windows opens a temporary file once)
    with tempfile.NamedTemporaryFile('w', encoding='utf-8', suffix='.py',
                                     delete=False) as f:
        f.write(text)
    try:
        return Config.fromfile(f.name, import_custom_modules=False).to_dict()
    except Exception:  # not the text of a config: nothing to tell
        return None
    finally:
        os.remove(f.name)


def trained_model_config(checkpoint) -> Optional[dict]:
    """The ``model`` config of the run that saved an mmengine ``checkpoint``
    (:func:`trained_config`), or None."""
    return (trained_config(checkpoint) or {}).get('model')


def trained_objective(checkpoint) -> Optional[str]:
    """The objective (:func:`config_objective`) of the run that saved an mmengine
    ``checkpoint``, or None."""
    return config_objective(trained_model_config(checkpoint))


# The objective settings that decide what the denoiser's output and its time input
# mean: weights sampled (or trained on) under other values of these are read wrongly
# without a word. Settings of training alone (train_eps, loss_weight, time_dist,
# use_kl, ...) or of sampling alone (sample_eps, timestep_respacing, sigma_small) are
# not among them. Transport's time_shift is said in a note (OBJECTIVE_NOTED): it is
# the law of the training times and the fixed-step samplers' grid, not a meaning of
# the output, and a shift of one's own at sampling may be meant.
OBJECTIVE_MEANING = {
    'Transport': ('path', 'prediction', 'timestep_convention'),
    'GaussianDiffusion': ('num_timesteps', 'beta_schedule', 'learn_sigma', 'predict_xstart'),
    'WuerstchenDiffusion': ('s', 'scaler'),
}
OBJECTIVE_NOTED = {'Transport': ('time_shift',)}


def keyword_defaults(fn) -> dict:
    """``{name: default}`` of a callable's (a class's constructor's) keyword
    parameters; {} where it has no signature (None, a builtin)."""
    import inspect
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in parameters.items() if p.default is not p.empty}


def _objective_class(objective) -> Optional[type]:
    """The class of ``objective`` (an objective, its class or its registered name),
    or None where the name is not registered here."""
    if isinstance(objective, str):
        from mmsora.registry import DIFFUSION
        return DIFFUSION.get(objective.rpartition('.')[2])
    if objective is not None and not isinstance(objective, type):
        return type(objective)
    return objective


def constructor_defaults(objective) -> dict:
    """The keyword defaults of an objective's constructor (``objective``: the
    objective, its class or its registered name), a subclass's with those of the
    base constructors its ``**kwargs`` go to (MinSNRGaussianDiffusion(snr_gamma=5.0,
    **kwargs) has GaussianDiffusion's beta_schedule); {} where it is not found."""
    import inspect
    cls = _objective_class(objective)
    defaults = {}
    for base in (cls.__mro__ if isinstance(cls, type) else ()):
        init = base.__dict__.get('__init__')
        if init is None:
            continue
        defaults = {**keyword_defaults(init), **defaults}
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break  # (what it gives its bases is its own)
    return defaults


def meaning_kind(kind: Optional[str]) -> Optional[str]:
    """The class name :data:`OBJECTIVE_MEANING` and :data:`OBJECTIVE_NOTED` list the
    settings of objective ``kind`` (a class name) under: its own, else its nearest
    registered base class's that has an entry (a MinSNRGaussianDiffusion is a
    GaussianDiffusion), else ``kind`` (a name not registered here). Before, the exact
    name alone: a subclass's schedule changed at ``--resume`` trained on silently."""
    if kind is None or kind in OBJECTIVE_MEANING:
        return kind
    cls = _objective_class(kind)
    if not isinstance(cls, type):
        return kind
    return next((base.__name__ for base in cls.__mro__
                 if base.__name__ in OBJECTIVE_MEANING), kind)


def objective_settings(model) -> Optional[dict]:
    """The objective of a ``model`` config: ``{'type': its class name}`` and the
    settings of :data:`OBJECTIVE_MEANING` and :data:`OBJECTIVE_NOTED`, each the
    config's value or the constructor's default; None where the config names no
    objective (:func:`config_objective`)."""
    kind = config_objective(model)
    if kind is None:
        return None
    given = model.get('diffusion') or {}
    defaults = constructor_defaults(kind)
    settings = dict(type=kind)
    base = meaning_kind(kind)
    for name in OBJECTIVE_MEANING.get(base, ()) + OBJECTIVE_NOTED.get(base, ()):
        if name in given or name in defaults:
            settings[name] = given[name] if name in given else defaults[name]
    denoiser = config_denoiser(model)
    if denoiser is not None:
        settings['denoiser'] = denoiser
    return settings


def config_denoiser(model) -> Optional[str]:
    """The denoiser class name of a ``model`` config: its ``denoiser.type`` without a
    scope (``mmsora.DiT``), or None."""
    denoiser = model.get('denoiser') if isinstance(model, dict) else None
    kind = denoiser.get('type') if isinstance(denoiser, dict) else None
    kind = getattr(kind, '__name__', kind)  # (a class in a config of Python types)
    return kind.rpartition('.')[2] if isinstance(kind, str) else None


def sit_training_args(checkpoint) -> Optional[dict]:
    """The ``args`` of a file SiT's train.py saved (``{'model', 'ema', 'opt', 'args'}``,
    ``args`` its argparse Namespace, which names the ``path_type``) as a dict, or None:
    a DiT / fast-DiT file (args without a path_type), or any other."""
    if not isinstance(checkpoint, Mapping) or 'state_dict' in checkpoint:
        return None
    args = checkpoint.get('args')
    given = vars(args) if hasattr(args, '__dict__') else args
    if not isinstance(given, Mapping) or 'path_type' not in given:
        return None
    return dict(given)


def training_file_kind(checkpoint) -> str:
    """Whose train.py saved a ``{'model', 'ema', 'opt', 'args'}`` file, in words:
    'SiT' (:func:`sit_training_args`) or 'DiT / fast-DiT'."""
    return 'SiT' if sit_training_args(checkpoint) is not None else 'DiT / fast-DiT'


def checkpoint_objective(checkpoint) -> Optional[dict]:
    """The objective a checkpoint was trained with, as :func:`objective_settings`
    gives a config's: from an mmengine checkpoint's config text (its ``meta``), or
    from a SiT training file's args (Transport with their path and prediction, SiT's
    time in [0, 1] and no shift); None where the file does not say (a released DiT
    file, a DiT / fast-DiT training file, a fork's args in names of its own)."""
    settings = objective_settings(trained_model_config(checkpoint))
    if settings is not None:
        return settings
    args = sit_training_args(checkpoint)
    if args is None:
        return None
    from mmsora.diffusion.transport import PATHS, PREDICTIONS
    path, prediction = args.get('path_type'), args.get('prediction', 'velocity')
    if path not in PATHS or prediction not in PREDICTIONS:  # (REPA's path_type='linear')
        return None
    return dict(type='Transport', path=path, prediction=prediction,
                timestep_convention='sit', time_shift=1.0)


def objective_differences(theirs: Optional[dict], ours: Optional[dict],
                          noted: bool = False) -> list:
    """``[(setting, theirs, ours)]``: where two objectives of one class
    (:func:`objective_settings`, :func:`checkpoint_objective`) differ in the settings
    of :data:`OBJECTIVE_MEANING` (``noted``: of :data:`OBJECTIVE_NOTED`), those of a
    subclass's nearest base with an entry (:func:`meaning_kind`); then, not
    ``noted``, ``('denoiser', theirs, ours)`` where both name a denoiser class and
    they differ, whatever the objectives, unless both are mmsora's own
    (:func:`_shipped_denoiser`). [] where either is unknown.

    The denoiser's class was not compared: a run of a DiT subclass of one's own (its
    weights' keys a DiT's) loaded into a DiT config and sampled as a DiT silently."""
    if not (theirs and ours):
        return []
    found = []
    if theirs['type'] == ours['type']:
        names = (OBJECTIVE_NOTED if noted else OBJECTIVE_MEANING).get(
            meaning_kind(theirs['type']), ())
        found = [(name, theirs[name], ours[name]) for name in names
                 if name in theirs and name in ours and theirs[name] != ours[name]]
    denoisers = theirs.get('denoiser'), ours.get('denoiser')
    if not noted and None not in denoisers and denoisers[0] != denoisers[1] \
            and not all(map(_shipped_denoiser, denoisers)):
        found.append(('denoiser', *denoisers))
    return found


def _shipped_denoiser(kind: str) -> bool:
    """Whether the denoiser class named ``kind`` is one of mmsora's own. No two of them
    share a weight layout, so a strict load tells them apart (and a DiT run inflated
    into a VideoDiT is meant); a class of one's own (a DiT subclass) may share its
    base's, or be one that does not import here."""
    from mmsora.registry import MODELS
    cls = MODELS.get(kind)
    return isinstance(cls, type) and cls.__module__.split('.')[0] == 'mmsora'


def said_objective_differences(differences: Sequence) -> tuple:
    """``(trained, ours, options)`` in words for :func:`objective_differences`:
    'path=GVP, prediction=noise', the same settings' values in the config, and the
    ``--cfg-options`` entries that give the trained ones (learn_sigma the denoiser's
    too: LatentDiffusion refuses the two apart; a denoiser class its type, or the
    run's own config)."""
    trained = ', '.join(f'{name}={theirs}' for name, theirs, _ in differences)
    ours = ', '.join(f'{name}={value}' for name, _, value in differences)
    options = ' '.join(('model.denoiser.type' if name == 'denoiser' else
                        f'model.diffusion.{name}') + f'={theirs}'
                       + (f' model.denoiser.{name}={theirs}' if name == 'learn_sigma' else '')
                       for name, theirs, _ in differences)
    if any(name == 'denoiser' for name, _, _ in differences):
        # (a denoiser of one's own has arguments and custom_imports of its own)
        options += (', or give the run\'s own config (the .py in its work dir) or its '
                    'work dir')
    return trained, ours, options


def check_trained_objective(checkpoint, model, name=None) -> None:
    """Refuse a checkpoint trained with another objective than the config samples
    with (a SiT run's sampled through a DDPM config), or with other settings of it
    that change what the model's output and time mean (Transport's path, prediction
    and timestep_convention; GaussianDiffusion's learn_sigma, predict_xstart and
    schedule): a run fine-tuned with timestep_convention=dit sampled through the SiT
    config, or a noise-prediction run as velocity, sampled wrongly without a word.
    The objective is read from the config text an mmengine checkpoint's meta holds,
    or from a SiT training file's args. Another time_shift is said in a note.
    ``name``: the checkpoint as the messages name it (default ``--checkpoint CKPT``).
    tools/infer.py and tools/test.py check with it before the weights load."""
    from mmsora.utils.cli import UserError, note
    name = name or f'--checkpoint {checkpoint}'
    try:
        checkpoint = resolve_checkpoint(checkpoint)  # (a work dir: its newest)
        if not osp.isfile(checkpoint) or checkpoint.endswith('.safetensors'):
            return
        obj = load_checkpoint_file(checkpoint)  # (mapped)
    except Exception:  # an unreadable file is named where the weights load
        return
    theirs, ours = checkpoint_objective(obj), objective_settings(model)
    if not (theirs and ours):
        return
    sit = sit_training_args(obj) is not None
    if theirs['type'] != ours['type']:
        fix = ('give a SiT config (configs/sit/)' if sit else
               'give the config it was trained with (the .py in its work dir), or its '
               'work dir')
        raise UserError(f'{name}: trained with the {theirs["type"]} objective'
                        f'{" (a SiT training file)" if sit else ""}, the config samples '
                        f'with {ours["type"]}: {fix}')
    differ = objective_differences(theirs, ours)
    if differ:
        trained, given, options = said_objective_differences(differ)
        raise UserError(f'{name}: trained with {trained}'
                        f'{" (its SiT args)" if sit else ""}, the config samples with '
                        f'{given}: its outputs would be misread (wrong samples): sample as '
                        f'trained, with --cfg-options {options}')
    shifted = objective_differences(theirs, ours, noted=True)
    if shifted:
        trained, given, options = said_objective_differences(shifted)
        note(f'{name}: trained with {trained}, sampled with {given} (the fixed-step '
             'samplers\' time grid; to sample on the grid it was trained for: '
             f'--cfg-options {options})')
