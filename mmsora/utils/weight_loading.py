"""A checkpoint's weights into a model: the state dict found in a released DiT,
fast-DiT, SiT, mmengine or DeepSpeed file (EMA first), wrapper prefixes stripped,
shapes compared with a hint for the usual mismatch (another image size or frame count,
patch size, learn_sigma, a null label row), and the tables a fine-tune keeps (the
positional tables, the label table)."""
import math
from collections.abc import Mapping
from typing import Optional, Sequence

import torch
import torch.nn as nn

from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.trained_settings import constructor_defaults

__all__ = ['LABEL_TABLE', 'extract_state_dict', 'WRAPPER_PREFIXES', 'strip_wrapper_prefixes',
           'weight_mismatch', 'pos_embed_hint', 'null_row_hint', 'mismatch_hint',
           'learn_sigma_hint', 'fixed_tables', 'fine_tune_tables', 'state_dict_mismatch',
           'load_state_dict_checked', 'table_may_differ', 'tables_kept', 'say_tables_kept',
           'load_dit_checkpoint']


# The label table of a class-conditional DiT / VideoDiT (num_classes rows, and the
# null class's for guidance).
LABEL_TABLE = 'y_embedder.embedding_table.weight'


# Keys of the training checkpoints written by DiT's and fast-DiT's train.py, in the
# order they are preferred: the EMA weights are the ones the papers sample with.
_TRAINING_KEYS = ('ema', 'model')


def _is_state_dict(obj) -> bool:
    """Whether ``obj`` is a non-empty mapping of names to tensors."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(v, torch.Tensor) for v in obj.values()))


def extract_state_dict(obj: Mapping, key: Optional[str] = 'auto',
                       prefix: Optional[str] = None) -> dict:
    """Pick the model state dict out of a loaded checkpoint.

    Understands:

    * a raw state dict (the released ``DiT-XL-2-256x256.pt`` is the raw EMA weights);
    * DiT / fast-DiT training checkpoints ``{'model', 'ema', 'opt', 'args'}``;
      ``'auto'`` takes ``'ema'``;
    * mmengine checkpoints ``{'state_dict', 'meta', ...}``; ``'auto'`` takes
      ``'state_dict'``, which holds the EMA weights when mmengine's ``EMAHook`` saved
      it (the hook swaps them in). Their keys carry the owning module's path, e.g.
      ``'denoiser.'`` or ``'ema_model.module.denoiser.'``: pass it as ``prefix``.

    A ``module.`` / ``_orig_mod.`` prefix that every key carries (a DDP or
    torch.compile wrapper saved) is taken off: :func:`strip_wrapper_prefixes`.

    Args:
        obj (Mapping): A loaded checkpoint.
        key (str | None): Entry to take (``'ema'``, ``'model'``, ``'state_dict'``,
            ``'ema_state_dict'``, ...), ``'auto'`` to guess, or None for ``obj`` itself.
        prefix (str | None): Keep only keys starting with ``prefix`` and strip it.

    Returns:
        dict: Parameter names to tensors.
    """
    if not isinstance(obj, Mapping):
        raise TypeError(f'expected a checkpoint dict, got {type(obj).__name__}')
    if key == 'auto':
        if _is_state_dict(obj):
            key = None
        else:
            candidates = [k for k in (*_TRAINING_KEYS, 'state_dict') if k in obj]
            if not candidates:
                raise KeyError(f'cannot find a state dict in the checkpoint; its keys are '
                               f'{sorted(obj)[:20]}; pass key=...')
            key = candidates[0]
    if key is not None:
        if key not in obj:
            raise KeyError(f'checkpoint has no entry {key!r}; its keys are {sorted(obj)[:20]}')
        obj = obj[key]
    # Drop non-tensor entries (mmengine's EMA dict has a 'steps' counter, for one).
    state_dict = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if prefix:
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not stripped:
            raise KeyError(f'no key starts with prefix {prefix!r}; first keys are '
                           f'{list(state_dict)[:5]}')
        state_dict = stripped
    return strip_wrapper_prefixes(state_dict)


# What torch's wrappers put before every key of the module they wrap when the wrapper
# itself is saved: DistributedDataParallel / DataParallel, torch.compile.
WRAPPER_PREFIXES = ('module.', '_orig_mod.')


def strip_wrapper_prefixes(state_dict: Mapping) -> dict:
    """``state_dict`` without a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile)
    prefix that every key carries, nested ones too (``module._orig_mod.``).

    DiT forks that save ``model.state_dict()`` of the wrapped model instead of DiT's
    ``model.module.state_dict()`` give such files; they were refused as another
    model's weights ('32 missing (e.g. pos_embed); 32 not in the model (e.g.
    module.pos_embed)'). The prefixes are the wrappers', not the model's structure;
    only one that every key carries is taken off."""
    state_dict = dict(state_dict)
    while state_dict:
        prefix = next((p for p in WRAPPER_PREFIXES
                       if all(k.startswith(p) for k in state_dict)), None)
        if prefix is None:
            break
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def weight_mismatch(own: Mapping, given: Mapping, own_name: str = 'model',
                    fixed: Sequence[str] = (), last: Sequence[str] = ()) -> str:
    """The difference between two ``{name: shape}`` maps in one clause (the counts of
    weights of another shape, missing and extra, each with its first example, and
    what that says of the file: :func:`_kind_of_file`, :func:`_frames_hint`), or ''
    when they match. ``given`` is the checkpoint's, ``own`` the ``own_name``'s;
    ``fixed`` names tables whose length may differ at the same width
    (:func:`fine_tune_tables`); ``last`` names weights counted but given as the
    example only where no other weight differs.

    Weights the checkpoint has and the model has not read '21 the config has not
    (e.g. denoiser.temp_embed)' before; a video DiT's file for an image model (or the
    reverse) was not named as such."""
    differ = [k for k in given if k in own and tuple(own[k]) != tuple(given[k])
              and not (k in fixed and table_may_differ(k, own[k], given[k]))]
    # a learned weight is the telling example
    differ.sort(key=lambda k: k in fixed or k in last)
    missing = [k for k in own if k not in given]
    extra = [k for k in given if k not in own]
    found = []
    if differ:
        k = differ[0]
        found.append(f'{len(differ)} of another shape (e.g. {k}: {tuple(given[k])} in the '
                     f'checkpoint, {tuple(own[k])} in the {own_name})')
    if missing:
        found.append(f'{len(missing)} missing (e.g. {missing[0]})')
    if extra:
        found.append(f'{len(extra)} not in the {own_name} (e.g. {extra[0]})')
    if found:
        found += [said for said in (_kind_of_file(own, given), _frames_hint(own, given, differ))
                  if said]
    return '; '.join(found)


def _leaf(name: str) -> str:
    return name.rsplit('.', 1)[-1]


def _kind_of_file(own: Mapping, given: Mapping) -> str:
    """What keys present on one side alone say of the file: a video DiT's (its
    ``temp_embed``) for an image model, or an image DiT's for a video model."""
    theirs = any(_leaf(k) == 'temp_embed' for k in given)
    ours = any(_leaf(k) == 'temp_embed' for k in own)
    if theirs and not ours:
        return 'the file is a video DiT (it has temp_embed)'
    if ours and not theirs and any(_leaf(k) == 'pos_embed' for k in given):
        return ('the file is an image DiT: tools/train.py --load-from inflates it into a '
                'video model; it cannot be sampled as one')
    return ''


def _frames_hint(own: Mapping, given: Mapping, differ: Sequence[str]) -> str:
    """A ``temp_embed`` of another length (at the same width): the frame count the
    file's video DiT was built for."""
    for k in differ:
        theirs, ours = tuple(given[k]), tuple(own[k])
        if _leaf(k) == 'temp_embed' and len(theirs) == len(ours) == 3 \
                and theirs[2] == ours[2]:
            return (f'the file has a frame table for {theirs[1]} frames (this one: '
                    f'{ours[1]}): set model.denoiser.num_frames={theirs[1]}')
    return ''


def _patch_size_of(shapes: Mapping) -> Optional[int]:
    """The patch size of a DiT-like state dict: its patch embedding's kernel."""
    shape = shapes.get('x_embedder.proj.weight')
    return int(shape[-1]) if shape is not None and len(shape) == 4 else None


def pos_embed_hint(theirs, ours, patch_size=None, their_patch=None) -> str:
    """What a checkpoint's ``pos_embed`` of another shape than the model's says: the
    token grid (input_size at the checkpoint's patch size, ``their_patch``, else the
    model's, ``patch_size``) or the width it was trained with.

    Before, the grid was turned into an input_size at the model's patch size alone:
    a patch-2 checkpoint in a patch-4 model got 'set model.denoiser.input_size=32 at
    patch_size 4', which then failed on the patch embedding's kernel."""
    if len(theirs) == 3 and len(ours) == 3 and theirs[2] != ours[2]:
        return (f'it is a model of hidden_size {theirs[2]} (this one: {ours[2]}): build '
                'the model with the settings it was trained with')
    side = math.isqrt(theirs[-2]) if len(theirs) >= 2 else 0
    patch = their_patch or patch_size
    if side and side * side == theirs[-2] and patch:
        size = side * patch
        setting = (f'a {side}x{side} grid: set model.denoiser.input_size={size} at '
                   f'patch_size {patch}' if patch == (patch_size or patch) else
                   f'a {side}x{side} grid at patch_size {patch} (this model\'s: '
                   f'{patch_size}): set model.denoiser.patch_size={patch} and '
                   f'model.denoiser.input_size={size}')
        return (f'it is a model for {theirs[-2]} tokens, {setting} ({size * 8} px with an '
                'SD VAE; tokens = (input_size / patch_size) ** 2), and model.latent_shape\'s '
                f'height and width to {size} alike')
    return ('it is a model for another input_size / patch_size / hidden_size: build the '
            'model to match (tokens = (input_size / patch_size) ** 2: a 512 px DiT needs '
            'input_size=64)')


def null_row_hint(ours, theirs) -> str:
    """What label tables (shapes) one row apart at the same width say: one has the
    null-class row for guidance and the other not, or ''."""
    if ours is None or theirs is None:
        return ''
    ours, theirs = _shape(ours), _shape(theirs)
    if ours[-1:] != theirs[-1:] or abs(ours[0] - theirs[0]) != 1:
        return ''
    if theirs[0] > ours[0]:
        return (f'the label tables are one row apart: the file\'s {theirs[0]} rows are '
                f'{theirs[0] - 1} classes and the null-class row for guidance, which this '
                'model has not: set model.denoiser.class_dropout_prob > 0 (DiT: 0.1)')
    return (f'the label tables are one row apart: the file\'s {theirs[0]} rows hold no '
            'null-class row (trained with class_dropout_prob=0): set '
            'model.denoiser.class_dropout_prob=0')


def mismatch_hint(model: nn.Module, own: Mapping, given: Mapping, fixed=(),
                  objective=None) -> str:
    """What to do about a checkpoint of another model (``own`` and ``given``: the
    denoiser's and the checkpoint's shapes, the denoiser's own names), or '' where
    the mismatch says it already (an image DiT's file for a video model). The grid,
    patch size, null-class row, class count, input channels and learned sigma are
    named with the setting to give; a VAE's weights as such (they were told to
    change the widths). ``fixed``: the tables a fine-tune may take from the config
    (:func:`fine_tune_tables`), which then say nothing of the mismatch.
    ``objective``: the model's objective (or its class name), for the learned-sigma
    settings (:func:`learn_sigma_hint`)."""
    def differs(k):
        return k in own and k in given and _shape(own[k]) != _shape(given[k]) and not (
            k in fixed and table_may_differ(k, own[k], given[k]))

    if any(k.startswith(('encoder.', 'decoder.')) for k in given) \
            and not any(k.startswith(('encoder.', 'decoder.')) for k in own):
        return ('the file holds a VAE\'s weights (encoder / decoder), not a denoiser\'s: '
                'give the denoiser\'s checkpoint (a VAE folder goes to '
                'model.vae.pretrained_path)')
    ours, theirs = _patch_size_of(own), _patch_size_of(given)
    ours = ours or getattr(model, 'patch_size', None)
    if differs('pos_embed'):
        return pos_embed_hint(tuple(given['pos_embed']), tuple(own['pos_embed']), ours,
                              theirs)
    if theirs and ours and theirs != ours:
        return (f'the file is of patch_size {theirs} (this model of {ours}): set '
                f'model.denoiser.patch_size={theirs}')
    null_row = null_row_hint(own.get(LABEL_TABLE), given.get(LABEL_TABLE))
    if null_row:
        return null_row
    if _kind_of_file(own, given).startswith('the file is an image DiT'):
        return ''
    if differs(LABEL_TABLE) and _shape(own[LABEL_TABLE])[-1:] == _shape(
            given[LABEL_TABLE])[-1:]:
        rows = _shape(given[LABEL_TABLE])[0]
        return (f'the file\'s label table has {rows} rows ({rows - 1} classes and the '
                f'null-class row, or {rows} without one): set model.denoiser.num_classes '
                'and model.num_classes to match (and class_dropout_prob)')
    patch = [_shape(x['x_embedder.proj.weight']) if 'x_embedder.proj.weight' in x
             else None for x in (own, given)]
    if None not in patch and patch[0] != patch[1] and patch[0][::2] == patch[1][::2]:
        return (f'the file takes {patch[1][1]} input channels (this model {patch[0][1]}): '
                f'set model.denoiser.in_channels={patch[1][1]} (the latents\' channels)')
    out = [_shape(x['final_layer.linear.weight']) if 'final_layer.linear.weight' in x
           else None for x in (own, given)]
    if None not in out and out[0][1:] == out[1][1:] and out[1][0] in (2 * out[0][0],
                                                                      out[0][0] // 2):
        sigma = out[1][0] > out[0][0]
        return (f'the file {"predicts" if sigma else "does not predict"} the variance '
                f'(learn_sigma: {out[1][0]} outputs, this model {out[0][0]}): '
                + learn_sigma_hint(sigma, objective))
    return ('build the model with the settings it was trained with (widths, depth, '
            'patch size, learn_sigma, classes)')


def learn_sigma_hint(sigma: bool, objective=None) -> str:
    """The settings that give a denoiser ``learn_sigma=sigma``: the denoiser's, and
    the objective's own where it has one (GaussianDiffusion; Transport has none and
    refused it as an unknown key, after the hint said to set it). ``objective``: an
    objective, its class or its class name; None where the caller does not know it."""
    setting = f'set model.denoiser.learn_sigma={sigma}'
    if objective is None:
        return (f'{setting} (with GaussianDiffusion, model.diffusion.learn_sigma={sigma} '
                'alike)')
    return (f'{setting} and model.diffusion.learn_sigma={sigma}'
            if 'learn_sigma' in constructor_defaults(objective) else setting)


# The position tables DiT and VideoDiT compute from their config in
# initialize_weights (sin-cos of the token grid, get_2d_sincos_pos_embed, and of the
# frame index, get_1d_sincos_pos_embed_from_grid) and never train: frozen Parameters,
# in the state dict only because the original DiT keeps pos_embed there.
_FIXED_TABLES = {'DiT': ('pos_embed',), 'VideoDiT': ('pos_embed', 'temp_embed')}


def fixed_tables(model: nn.Module) -> set:
    """The names of ``model``'s fixed position tables (:data:`_FIXED_TABLES` of its
    class or a base, still frozen): computed from the config, so a checkpoint's of
    another size tells nothing the model's own does not. A learned table is never
    one."""
    names = {n for cls in type(model).__mro__ for n in _FIXED_TABLES.get(cls.__name__, ())}
    params = dict(model.named_parameters())
    return {n for n in names if n in params and not params[n].requires_grad}


def fine_tune_tables(model: nn.Module) -> set:
    """The tables of ``model`` whose length its config decides, which a fine-tune
    takes from the config where a file's differ at the same width: the fixed
    position tables (:func:`fixed_tables`) and the label table (another class
    count: it starts from the config's initialisation, as DiT users fine-tuning the
    ImageNet model on their own classes replace it)."""
    params = dict(model.named_parameters())
    return fixed_tables(model) | ({LABEL_TABLE} if LABEL_TABLE in params else set())


def state_dict_mismatch(model: nn.Module, own: Mapping, given: Mapping,
                        fine_tune: bool = False, objective=None, own_name: str = 'model',
                        prefix: str = '') -> str:
    """What keeps a file's weights (``given``) from loading into ``model`` (``own``;
    both ``{name: shape}`` maps), in one clause with the setting to give
    (:func:`weight_mismatch`, :func:`mismatch_hint`), or '' where they load: the
    same shapes, or with ``fine_tune`` tables whose length the config decides of
    another length alone (:func:`fine_tune_tables`; the model keeps its own). The
    loader (:func:`load_state_dict_checked`) and ``tools/train.py``'s checks before
    the Runner say it with this rule and these words (they were written apart: the
    loader counted the tables and named ``pos_embed`` first, the checks neither).
    ``prefix``: the denoiser's keys' prefix in both maps (``'denoiser.'`` in an
    mmengine run's state dict), kept in the weights named; ``own_name``: what
    ``own`` is said to be; ``objective``: as :func:`mismatch_hint` takes it."""
    tables = {prefix + k for k in fine_tune_tables(model)} if fine_tune else set()
    if not weight_mismatch(own, given, fixed=tables):
        return ''
    # refused, nothing loads: every weight of another shape is counted, the tables
    # the fine-tune would have kept named last (a learned weight is the telling one)
    found = weight_mismatch(own, given, own_name, last=tables)
    hint = mismatch_hint(model, *({k[len(prefix):]: v for k, v in x.items()
                                   if k.startswith(prefix)} for x in (own, given)),
                         {k[len(prefix):] for k in tables}, objective)
    return found + (f'; {hint}' if hint else '')


def load_state_dict_checked(model: nn.Module, state_dict: Mapping, source: str,
                            fine_tune: bool = False, objective=None):
    """``model.load_state_dict(state_dict, strict=True)``, with a mismatch named in one
    line (the first differing, missing or extra weight) instead of torch's list.

    ``fine_tune``: where the only weights of another shape are tables whose length
    the config decides (:func:`fine_tune_tables`: DiT's ``pos_embed``, VideoDiT's
    ``temp_embed``, the label table), load the rest and keep the model's own
    tables, said in one log line: a fine-tune to another input size, frame count
    (as DiT, Latte and Open-Sora users do) or class count (it was refused as weights
    of another model). Off for sampling, where another token grid or class count
    than the one trained is a mistake to name. ``objective``: the objective
    ``model`` is sampled or trained with, for the learned-sigma hint
    (:func:`learn_sigma_hint`).
    """
    own = {k: v.shape for k, v in model.state_dict().items()}
    given = {k: v.shape for k, v in state_dict.items()}
    if not weight_mismatch(own, given):
        return model.load_state_dict(state_dict, strict=True)
    found = state_dict_mismatch(model, own, given, fine_tune, objective)
    if found:
        raise ValueError(f'{source}: its weights are not this model\'s: {found}')
    return _load_keeping_tables(model, state_dict, fine_tune_tables(model), source)


def _load_keeping_tables(model: nn.Module, state_dict: Mapping, tables: set, source: str):
    """Load ``state_dict`` strictly with the model's own values of the tables of
    another length (see :func:`load_state_dict_checked`), saying so."""
    own = model.state_dict()
    kept = tables_kept(own, state_dict, tables)
    say_tables_kept(source, own, state_dict, kept)
    return model.load_state_dict({**state_dict, **{k: own[k] for k in kept}}, strict=True)


def _shape(value) -> tuple:
    return tuple(value.shape) if hasattr(value, 'shape') else tuple(value)


def table_may_differ(name: str, ours, theirs) -> bool:
    """Whether a fine-tune may keep the model's table ``name`` (one of
    :func:`fine_tune_tables`) of shape ``ours`` over the file's of shape ``theirs``:
    the same width, another length; for the label table not a length one apart,
    which is the null-class row for guidance (``class_dropout_prob`` set otherwise
    than in training), not new classes: that is refused, naming the setting (it
    would have started the same classes afresh)."""
    ours, theirs = _shape(ours), _shape(theirs)
    if ours == theirs or ours[-1:] != theirs[-1:]:
        return False
    return not (name.endswith(LABEL_TABLE) and abs(ours[0] - theirs[0]) == 1)


def tables_kept(own: Mapping, given: Mapping, tables: set) -> list:
    """Which of ``tables`` (:func:`fine_tune_tables`) a fine-tune keeps from the
    model (``own``) rather than the file (``given``; tensors or shapes):
    :func:`table_may_differ`."""
    return [k for k in sorted(tables) if k in given and k in own
            and table_may_differ(k, own[k], given[k])]


def say_tables_kept(source: str, own: Mapping, given: Mapping, kept: Sequence[str]) -> None:
    """One log line for the fixed tables a fine-tune kept (:func:`tables_kept`), and
    a warning for a label table started afresh (the class count changed: a mistake
    unless the new classes were meant)."""
    from mmengine.logging import print_log

    def shapes(k):
        return f'{k} {_shape(own[k])} (the file\'s: {_shape(given[k])})'

    fixed = [k for k in kept if k != LABEL_TABLE]
    if fixed:
        print_log(f'{source}: kept the model\'s own ' + ', '.join(map(shapes, fixed))
                  + ': fixed sin-cos tables of the input size / frame count, computed '
                  'from the config; the rest is loaded', logger='current')
    if LABEL_TABLE in kept:
        import logging
        rows = _shape(given[LABEL_TABLE])[0]
        print_log(f'{source}: a label table of another length: the config\'s '
                  f'{shapes(LABEL_TABLE)} starts from its initialisation, the file\'s is '
                  'not used (a fine-tune to new classes; to keep the file\'s, set '
                  f'model.denoiser.num_classes and model.num_classes to {rows - 1} with '
                  f'class_dropout_prob > 0 (a null-class row for guidance), or to {rows} '
                  'without)', logger='current', level=logging.WARNING)


def load_dit_checkpoint(model: nn.Module, path: str, key: Optional[str] = 'auto',
                        prefix: Optional[str] = None, strict: bool = True,
                        fine_tune: bool = False):
    """Load a released / fast-DiT / mmengine checkpoint into a :class:`DiT`.

    Args:
        model (nn.Module): A DiT (anything with a ``pos_embed`` parameter).
        path (str): Checkpoint file (.pt / .pth / .safetensors).
        key (str | None): See :func:`extract_state_dict`. Defaults to 'auto'.
        prefix (str | None): See :func:`extract_state_dict`.
        strict (bool): Passed to ``load_state_dict``. Defaults to True.
        fine_tune (bool): A fine-tune to another input size or class count: see
            :func:`load_state_dict_checked`. Defaults to False.

    Returns:
        The ``load_state_dict`` result (missing and unexpected keys).

    Raises:
        ValueError: The checkpoint was trained at another resolution or patch size
            (its ``pos_embed`` shape differs from the model's).
    """
    state_dict = extract_state_dict(load_checkpoint_file(path), key=key, prefix=prefix)
    # load_state_dict would also fail here, but with a generic size-mismatch list;
    # a 256 px checkpoint in a 512 px model is common enough to say so plainly.
    if 'pos_embed' in state_dict and hasattr(model, 'pos_embed') and not (
            strict and fine_tune):
        theirs, ours = tuple(state_dict['pos_embed'].shape), tuple(model.pos_embed.shape)
        if theirs != ours:
            hint = pos_embed_hint(theirs, ours, getattr(model, 'patch_size', None),
                                  _patch_size_of({k: v.shape for k, v in state_dict.items()}))
            raise ValueError(f'{path}: checkpoint pos_embed has shape {theirs} but the '
                             f'model\'s is {ours}: {hint}')
    if strict:
        return load_state_dict_checked(model, state_dict, path, fine_tune)
    return model.load_state_dict(state_dict, strict=False)
