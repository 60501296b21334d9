"""Checkpoint io: read released / fast-DiT / mmengine checkpoints without running pickle code.

Every ``.pt`` / ``.pth`` file is read with ``torch.load(weights_only=True)``, so a
checkpoint can hold tensors and plain containers but never code that runs on load.
"""
import math
import os.path as osp
import pickle
import zipfile
from collections.abc import Mapping
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

__all__ = ['load_checkpoint_file', 'check_checkpoint_complete', 'extract_state_dict',
           'load_dit_checkpoint', 'load_state_dict_checked', 'weight_mismatch',
           'last_checkpoint', 'local_pretrained_kwargs']

# Keys of the training checkpoints written by DiT's and fast-DiT's train.py, in the
# order they are preferred: the EMA weights are the ones the papers sample with.
_TRAINING_KEYS = ('ema', 'model')


def local_pretrained_kwargs() -> dict:
    """Keyword arguments of diffusers' ``from_pretrained`` for a local folder: never
    a download; the low-memory load only where accelerate is installed (without it
    diffusers turns it off itself, after a warning to install accelerate at every
    VAE load)."""
    from importlib.util import find_spec
    return dict(local_files_only=True, low_cpu_mem_usage=find_spec('accelerate') is not None)


def load_checkpoint_file(path: str, map_location: Union[str, torch.device] = 'cpu',
                         safe_globals: Sequence = (), mmap: bool = True) -> dict:
    """Read a ``.pt`` / ``.pth`` (weights-only pickle) or ``.safetensors`` file.

    Args:
        path (str): File to read.
        map_location (str | torch.device): Device for the tensors. Defaults to 'cpu'.
        safe_globals (Sequence): More data-only classes the weights-only loader may
            build (DeepSpeed's, for its checkpoint folders).
        mmap (bool): Map the file (copy-on-write) instead of reading it: only the
            tensors used are read from disk, so taking a training checkpoint's EMA
            weights does not read its optimizer state into memory. Defaults to True
            (files in torch's legacy format are read). A caller that keeps the
            tensors for the whole run (``--resume``'s optimizer state) passes False:
            a live mapping keeps a checkpoint's disk space after it is pruned.

    Returns:
        dict: What the file holds (a state dict or a checkpoint dict).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        pickle.UnpicklingError: The file holds objects that weights-only loading
            refuses (anything but tensors and plain containers).
        ValueError: The file is truncated, damaged or not a torch checkpoint.
    """
    # mmengine checkpoints hold message-hub buffers and numpy RNG states: allowlist
    # those data-only types (mmsora.engine.compat) before the weights-only load.
    from mmsora.engine.compat import make_mmengine_checkpoints_loadable
    make_mmengine_checkpoints_loadable()
    path = str(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device=str(map_location))
    zipped = zipfile.is_zipfile(path)
    if not zipped:
        _check_pickle_start(path)
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            if mmap and not zipped:  # torch's legacy format
                mmap = False
            return torch.load(path, map_location=map_location, weights_only=True,
                              mmap=mmap)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f'{path} holds objects that torch.load(weights_only=True) refuses to '
            f'unpickle (they could run code): {_refusal(e)}; only tensors and plain '
            'containers are accepted') from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        # A truncated zip, or not a torch file at all (torch says KeyError: '101'; some
        # cuts of a zip make its reader seek before the start: OSError EINVAL).
        from mmsora.utils.cli import first_line
        raise ValueError(f'cannot read checkpoint {path}: it is truncated, damaged or not a '
                         f'torch checkpoint ({first_line(e).split(". ")[0]})') from None


def _check_pickle_start(path: str) -> None:
    """Raise ValueError, saying what the file is, unless a file that is not a whole
    zip starts as a pickle does (torch's legacy format): text would reach the
    unpickler and come back as a refusal of objects that 'could run code' (a Git LFS
    pointer, an HTML page)."""
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'\x80'):  # pickle's PROTO opcode
        return
    if head.startswith(b'PK\x03\x04'):  # a zip's first entry, its directory missing
        raise ValueError(f'cannot read checkpoint {path}: it is truncated (a zip archive '
                         'without the directory at its end: cut short while written or '
                         'copied)')
    if head.startswith(b'version https://git-lfs'):
        raise ValueError(f'cannot read checkpoint {path}: it is a Git LFS pointer, not '
                         'the file it stands for (fetch it: git lfs pull)')
    raise ValueError(f'cannot read checkpoint {path}: it is truncated or not a torch '
                     f'checkpoint (neither a zip archive nor a pickle: starts {head[:16]!r})')


def _refusal(error):
    """The line of torch's weights-only refusal that names the offending global."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if 'GLOBAL' in line or 'Unsupported' in line]
    return (named or lines or ['refused'])[0].strip().rstrip('.')


def last_checkpoint(work_dir):
    """The checkpoint a work dir's ``last_checkpoint`` file names, or None. The work
    dir's own file of that name comes first: mmengine writes an absolute path, which
    in a copied (or moved) work dir names the original's checkpoint."""
    last = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(last):
        return None
    with open(last) as f:
        named = f.read().strip()
    own = osp.join(work_dir, osp.basename(named.rstrip('/')))
    return own if osp.exists(own) else named


def check_checkpoint_complete(path: str) -> None:
    """Raise ValueError if a torch checkpoint file is truncated or not one.

    Cheap (reads the zip directory at the end of the file, not the tensors), so a
    ``--resume`` of a file cut short fails at once with its name.
    """
    path = str(path)
    if not (path.endswith('.safetensors') or zipfile.is_zipfile(path)):
        _check_pickle_start(path)


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
    return state_dict


def weight_mismatch(own: Mapping, given: Mapping, own_name: str = 'model') -> str:
    """The difference between two ``{name: shape}`` maps in one clause (the counts of
    weights of another shape, missing and extra, each with its first example), or ''
    when they match. ``given`` is the checkpoint's, ``own`` the ``own_name``'s."""
    differ = [k for k in given if k in own and tuple(own[k]) != tuple(given[k])]
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
        found.append(f'{len(extra)} the {own_name} has not (e.g. {extra[0]})')
    return '; '.join(found)


def pos_embed_hint(theirs, ours, patch_size=None) -> str:
    """What a checkpoint's ``pos_embed`` of another shape than the model's says: the
    token grid (input_size at the model's patch size) or the width it was trained
    with."""
    if len(theirs) == 3 and len(ours) == 3 and theirs[2] != ours[2]:
        return (f'it is a model of hidden_size {theirs[2]} (this one: {ours[2]}): build '
                'the model with the settings it was trained with')
    side = math.isqrt(theirs[-2]) if len(theirs) >= 2 else 0
    if side and side * side == theirs[-2] and patch_size:
        size = side * patch_size
        return (f'it is a model for {theirs[-2]} tokens, a {side}x{side} grid: set '
                f'model.denoiser.input_size={size} at patch_size {patch_size} '
                f'({size * 8} px with an SD VAE; tokens = (input_size / patch_size) ** 2)')
    return ('it is a model for another input_size / patch_size / hidden_size: build the '
            'model to match (tokens = (input_size / patch_size) ** 2: a 512 px DiT needs '
            'input_size=64)')


def load_state_dict_checked(model: nn.Module, state_dict: Mapping, source: str):
    """``model.load_state_dict(state_dict, strict=True)``, with a mismatch named in one
    line (the first differing, missing or extra weight) instead of torch's list."""
    own = {k: v.shape for k, v in model.state_dict().items()}
    given = {k: v.shape for k, v in state_dict.items()}
    found = weight_mismatch(own, given)
    if found:
        hint = (pos_embed_hint(tuple(given['pos_embed']), tuple(own['pos_embed']),
                               getattr(model, 'patch_size', None))
                if 'pos_embed' in own and 'pos_embed' in given
                and tuple(own['pos_embed']) != tuple(given['pos_embed'])
                else 'build the model with the settings it was trained with (widths, '
                'depth, patch size, learn_sigma, classes)')
        raise ValueError(f'{source}: its weights are not this model\'s: {found}; {hint}')
    return model.load_state_dict(state_dict, strict=True)


def load_dit_checkpoint(model: nn.Module, path: str, key: Optional[str] = 'auto',
                        prefix: Optional[str] = None, strict: bool = True):
    """Load a released / fast-DiT / mmengine checkpoint into a :class:`DiT`.

    Args:
        model (nn.Module): A DiT (anything with a ``pos_embed`` parameter).
        path (str): Checkpoint file (.pt / .pth / .safetensors).
        key (str | None): See :func:`extract_state_dict`. Defaults to 'auto'.
        prefix (str | None): See :func:`extract_state_dict`.
        strict (bool): Passed to ``load_state_dict``. Defaults to True.

    Returns:
        The ``load_state_dict`` result (missing and unexpected keys).

    Raises:
        ValueError: The checkpoint was trained at another resolution or patch size
            (its ``pos_embed`` shape differs from the model's).
    """
    state_dict = extract_state_dict(load_checkpoint_file(path), key=key, prefix=prefix)
    # load_state_dict would also fail here, but with a generic size-mismatch list;
    # a 256 px checkpoint in a 512 px model is common enough to say so plainly.
    if 'pos_embed' in state_dict and hasattr(model, 'pos_embed'):
        theirs, ours = tuple(state_dict['pos_embed'].shape), tuple(model.pos_embed.shape)
        if theirs != ours:
            raise ValueError(
                f'{path}: checkpoint pos_embed has shape {theirs} but the model\'s is '
                f'{ours}: {pos_embed_hint(theirs, ours, getattr(model, "patch_size", None))}')
    if strict:
        return load_state_dict_checked(model, state_dict, path)
    return model.load_state_dict(state_dict, strict=False)
