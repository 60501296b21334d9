"""Checkpoint io: read released / fast-DiT / mmengine checkpoints without running pickle code.

Every ``.pt`` / ``.pth`` file is read with ``torch.load(weights_only=True)``, so a
checkpoint can hold tensors and plain containers but never code that runs on load;
every ``.safetensors`` file through :func:`read_safetensors`. A file that cannot be
read is named in one line saying what it is (cut short, the other format, text).
"""
import json
import math
import os
import os.path as osp
import pickle
import re
import zipfile
from collections.abc import Mapping
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

__all__ = ['load_checkpoint_file', 'check_checkpoint_complete', 'extract_state_dict',
           'load_dit_checkpoint', 'load_state_dict_checked', 'weight_mismatch',
           'last_checkpoint', 'newest_numbered_checkpoint', 'local_pretrained_kwargs',
           'saved_checkpoint', 'intact_earlier_checkpoint', 'earlier_checkpoint_hint',
           'checkpoint_number',
           'read_safetensors', 'check_safetensors_file', 'fixed_tables', 'fine_tune_tables',
           'trained_objective', 'trained_model_config', 'config_objective',
           'read_json_config', 'mismatch_hint', 'folder_model', 'not_a_checkpoint_folder',
           'resolve_checkpoint', 'objective_settings', 'checkpoint_objective',
           'objective_differences', 'said_objective_differences', 'sit_training_args',
           'training_file_kind', 'learn_sigma_hint', 'keyword_defaults',
           'config_denoiser', 'meaning_kind', 'check_trained_objective']

# The label table of a class-conditional DiT / VideoDiT (num_classes rows, and the
# null class's for guidance).
LABEL_TABLE = 'y_embedder.embedding_table.weight'


# Keys of the training checkpoints written by DiT's and fast-DiT's train.py, in the
# order they are preferred: the EMA weights are the ones the papers sample with.
_TRAINING_KEYS = ('ema', 'model')


def hub_snapshot(path: str) -> str:
    """The snapshot a Hugging Face cache folder (``~/.cache/huggingface/hub/
    models--stabilityai--sd-vae-ft-ema``, what ``huggingface-cli download`` leaves)
    holds: the one ``refs/main`` names, else its only one; ``path`` otherwise (a plain
    model folder, or a cache folder of several snapshots and no ``refs/main``)."""
    snapshots = osp.join(path, 'snapshots')
    if not (osp.basename(path.rstrip(os.sep)).startswith('models--') and osp.isdir(snapshots)):
        return path
    try:
        with open(osp.join(path, 'refs', 'main'), encoding='utf-8') as f:
            named = osp.join(snapshots, f.read().strip())
        if osp.isdir(named):
            return named
    except OSError:
        pass
    found = os.listdir(snapshots)
    return osp.join(snapshots, found[0]) if len(found) == 1 else path


def local_pretrained_kwargs() -> dict:
    """Keyword arguments of diffusers' ``from_pretrained`` for a local folder: never
    a download; the low-memory load only where accelerate is installed (without it
    diffusers turns it off itself, after a warning to install accelerate at every
    VAE load)."""
    from importlib.util import find_spec
    return dict(local_files_only=True, low_cpu_mem_usage=find_spec('accelerate') is not None)


def read_json_config(path: str) -> Optional[dict]:
    """A model folder's JSON file (``config.json``, ``model_index.json``) as a dict, or
    None (none there, unreadable, or not a JSON object)."""
    try:
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def folder_model(folder: str):
    """What a model folder's ``config.json`` says it holds: ``'diffusers
    AutoencoderKL'`` (its ``_class_name``), ``'transformers T5EncoderModel'`` (its
    ``architectures``, else its ``model_type``), or None where it does not say (or
    cannot be read)."""
    config = read_json_config(osp.join(folder, 'config.json'))
    if config is None:
        return None
    if isinstance(config.get('_class_name'), str):
        return f'diffusers {config["_class_name"]}'
    names = config.get('architectures')
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        return f'transformers {"/".join(names)}'
    if isinstance(config.get('model_type'), str):
        return f'transformers {config["model_type"]!r} model'
    return None


def not_a_checkpoint_folder(path: str) -> str:
    """What a folder given as a checkpoint is, in a clause, when it is none of the
    folders the tools read (a DeepSpeed checkpoint folder, a work dir with a
    checkpoint, a diffusers DiT folder): a model of another kind (a VAE, a text
    encoder: its config.json) is named as such. Before, the tools said 'checkpoint
    not found' of a folder that exists, or listed the kinds without the diffusers
    one."""
    holds = folder_model(path)
    if holds:
        return (f'{path} holds a {holds} (its config.json), not a denoiser\'s weights: give '
                'a checkpoint file, a work dir, a DeepSpeed checkpoint folder or a diffusers '
                'DiT folder')
    return (f'{path}: a folder that is neither a work dir with a checkpoint '
            '(last_checkpoint, iter_N.pth), a DeepSpeed checkpoint folder nor a diffusers DiT '
            'folder: give a checkpoint file')


def resolve_checkpoint(path: str) -> str:
    """What the tools read for a checkpoint ``path``: a file, a DeepSpeed checkpoint
    folder or a diffusers DiT folder as they are, a work dir's newest checkpoint (the
    one ``last_checkpoint`` names, else its highest ``iter_N.pth``). Raises
    FileNotFoundError naming what a folder of another kind is
    (:func:`not_a_checkpoint_folder`), or that ``path`` does not exist."""
    from mmsora.utils.diffusers_dit import diffusers_dit_folder
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    if not osp.exists(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if not osp.isdir(path) or is_zero_checkpoint(path) or diffusers_dit_folder(path):
        return path
    try:
        newest = saved_checkpoint(path, option=None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f'{e}: give the checkpoint file') from None
    if newest is None:
        raise FileNotFoundError(not_a_checkpoint_folder(path))
    return newest


def load_checkpoint_file(path: str, map_location: Union[str, torch.device] = 'cpu',
                         safe_globals: Sequence = (), mmap: bool = True) -> dict:
    """Read a ``.pt`` / ``.pth`` / ``.bin`` (weights-only pickle) or ``.safetensors``
    file, or a diffusers DiT folder.

    Args:
        path (str): File (or diffusers DiT folder) to read.
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
        dict: What the file holds (a state dict or a checkpoint dict). A diffusers
        DiT (its pipeline or transformer folder, or its weights file beside its
        config.json) is given in the original DiT's layout
        (:mod:`mmsora.utils.diffusers_dit`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        pickle.UnpicklingError: The file holds objects that weights-only loading
            refuses (anything but tensors and plain containers).
        ValueError: The file is truncated, damaged or not a torch checkpoint (named
            ``.safetensors``: not a whole safetensors file, :func:`read_safetensors`),
            or diffusers DiT weights the original's layout cannot hold.
    """
    # mmengine checkpoints hold message-hub buffers and numpy RNG states: allowlist
    # those data-only types (mmsora.engine.compat) before the weights-only load.
    from mmsora.engine.compat import make_mmengine_checkpoints_loadable
    make_mmengine_checkpoints_loadable()
    from mmsora.utils import diffusers_dit
    path = str(path)
    folder = diffusers_dit.diffusers_dit_folder(path)
    if folder is not None:  # a diffusers DiT (the hub's facebook/DiT-XL-2-256)
        return diffusers_dit.read_diffusers_dit(
            folder, lambda f, where: _read_file(f, where, safe_globals, mmap), map_location)
    obj = _read_file(path, map_location, safe_globals, mmap)
    if diffusers_dit.is_diffusers_dit(obj):  # its weights file, named alone
        config = read_json_config(osp.join(osp.dirname(path), 'config.json'))
        return diffusers_dit.dit_state_from_diffusers(obj, config, path)
    return obj


def _read_file(path: str, map_location, safe_globals: Sequence = (), mmap: bool = True):
    """One file of :func:`load_checkpoint_file`, as it is."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if path.endswith('.safetensors'):
        return read_safetensors(path, map_location)
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
    pointer, an HTML page). A safetensors file given a torch name is named as such:
    it was 'neither a zip archive nor a pickle: starts b'8\\x0b...{"...''. It is
    refused rather than read by its content: the name decides how every other reader
    takes it (DiT's sample.py and mmengine torch.load a .pt), so renaming it mends it
    for all of them, and a torch file named .safetensors is refused alike."""
    with open(path, 'rb') as f:
        head = f.read(64)
    if not head:  # (it was "neither a zip archive nor a pickle: starts b''")
        raise ValueError(f'cannot read checkpoint {path}: it is empty (0 bytes: cut short '
                         'while written or copied)')
    if _is_safetensors_start(head, osp.getsize(path)):  # (its length may start 0x80)
        raise ValueError(f'cannot read checkpoint {path}: it is a safetensors file: name '
                         'it .safetensors')
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


# safetensors' layout: an 8-byte little-endian header length, the header (JSON: each
# tensor's dtype, shape and byte range in the data after it), the data.
_SAFETENSORS_MAX_HEADER = 100_000_000  # the largest header safetensors reads


def _is_safetensors_start(head: bytes, size: int) -> bool:
    """Whether a file of ``size`` bytes starting ``head`` (at least 9 bytes of it)
    starts as a safetensors file: a header length that fits the file, then JSON."""
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], 'little')
    return 2 <= length <= size - 8 and head[8:9] == b'{'


def _not_safetensors(path: str, why: str) -> ValueError:
    return ValueError(f'cannot read checkpoint {path}: it is truncated or not a '
                      f'safetensors file ({why})')


def check_safetensors_file(path: str) -> None:
    """Raise ValueError, in one line naming ``path`` and what it is, unless the file is
    laid out as a whole safetensors file: its header length, a JSON header, and the
    data up to the end of the last byte range the header gives. Cheap: reads the
    header alone.

    Before, a truncated or empty ``.safetensors`` (or a torch checkpoint given that
    name) reached safetensors' reader, whose ``SafetensorError: Error while
    deserializing header: incomplete metadata, file not fully covered`` ('header too
    large', 'header too small') came out of every tool as a raw traceback.
    """
    size = osp.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(64)
        if not _is_safetensors_start(head, size):
            _refuse_safetensors_start(path, head, size)
        length = int.from_bytes(head[:8], 'little')
        if length > _SAFETENSORS_MAX_HEADER:
            raise _not_safetensors(path, f'a header of {length} bytes, more than '
                                   'safetensors reads')
        f.seek(8)
        text = f.read(length)
    try:
        header = json.loads(text)
        end = max((int(entry['data_offsets'][1]) for name, entry in header.items()
                   if name != '__metadata__'), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise _not_safetensors(path, 'its header is not the JSON of a tensor '
                               'table') from None
    if 8 + length + end > size:
        raise _not_safetensors(path, f'its header gives {8 + length + end} bytes, the '
                               f'file holds {size}')


def _refuse_safetensors_start(path: str, head: bytes, size: int) -> None:
    """Raise ValueError saying what a ``.safetensors`` file that does not start as one
    is: a torch checkpoint, a Git LFS pointer, or cut short / something else."""
    if head.startswith((b'PK\x03\x04', b'\x80')):  # a zip archive, a pickle
        raise ValueError(f'cannot read checkpoint {path}: it is a torch checkpoint, not '
                         'safetensors: name it .pt')
    if head.startswith(b'version https://git-lfs'):
        raise ValueError(f'cannot read checkpoint {path}: it is a Git LFS pointer, not '
                         'the file it stands for (fetch it: git lfs pull)')
    if size < 8:
        raise _not_safetensors(path, f'{size} bytes, short of the 8-byte header length')
    length = int.from_bytes(head[:8], 'little')
    if length > size - 8:
        raise _not_safetensors(path, f'a header of {length} bytes in a file of {size}')
    raise _not_safetensors(path, f'no JSON header: starts {head[:16]!r}')


def read_safetensors(path: str, map_location: Union[str, torch.device] = 'cpu') -> dict:
    """A ``.safetensors`` file's tensors, every read of one going through here: a
    file that is not a whole safetensors file is named in one line
    (:func:`check_safetensors_file`; safetensors' own refusals likewise)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mmsora.utils.cli import first_line
    check_safetensors_file(path)
    try:
        return load_file(path, device=str(map_location))
    except SafetensorError as e:
        raise _not_safetensors(path, first_line(e)) from None


def _refusal(error):
    """The line of torch's weights-only refusal that names the offending global."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if 'GLOBAL' in line or 'Unsupported' in line]
    return (named or lines or ['refused'])[0].strip().rstrip('.')


def _named_last(work_dir) -> str:
    """What a work dir's ``last_checkpoint`` file holds ('' where none, or empty)."""
    last = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(last):
        return ''
    with open(last) as f:
        return f.read().strip()


def last_checkpoint(work_dir):
    """The checkpoint a work dir's ``last_checkpoint`` file names, else its newest
    numbered one (:func:`newest_numbered_checkpoint`), or None. It is the work dir's
    own file of that name, whether it exists or not (:func:`saved_checkpoint` refuses
    one gone): mmengine writes an absolute path, which in a copied (or moved) work dir
    names the original's checkpoint. Before, the original's was taken where the
    copy's was gone: ``--resume`` went on from another folder's checkpoint, and
    ``max_keep_ckpts`` then pruned the copy's own intact ones.

    What ``--resume``, tools/infer.py WORK_DIR and tools/export_denoiser.py WORK_DIR
    all take. Before, a work dir holding ``iter_*.pth`` without its
    ``last_checkpoint`` (the checkpoints copied alone) was taken for one without a
    checkpoint: ``--resume`` started at iteration 0 and pruned the old ones as it
    saved, and the other tools found nothing to read.
    """
    named = _named_last(work_dir)
    if not named:  # none, or empty (written in place and cut short by a kill)
        return newest_numbered_checkpoint(work_dir)
    own = osp.join(work_dir, osp.basename(named.rstrip('/')))
    if osp.exists(own) or osp.realpath(named) != osp.realpath(own):
        return own
    return named  # (its own, gone: named as the file names it)


def saved_checkpoint(work_dir, option: Optional[str] = '--resume'):
    """:func:`last_checkpoint`, checked to exist: None when nothing was saved; raises
    FileNotFoundError when ``last_checkpoint`` names a checkpoint gone (a work dir
    moved without it, its file removed, or a copy's own file removed: the original's
    is never taken), saying which earlier checkpoint of the work dir is readable
    (:func:`earlier_checkpoint_hint`, ``option`` the way to give it). What
    ``--resume`` continues from and what the tools read of a work dir
    (:func:`resolve_checkpoint`)."""
    newest = last_checkpoint(work_dir)
    if newest is not None and not osp.exists(newest):
        last, named = osp.join(work_dir, 'last_checkpoint'), _named_last(work_dir)
        if named != newest and osp.exists(named):  # a copy: the original's is there
            said = (f'{last} names {named}, another folder\'s checkpoint, and the work dir\'s '
                    f'own {newest} does not exist (a copied work dir resumes from its own '
                    'checkpoints only)')
        else:
            said = f'{last} names {named}, which does not exist'
        earlier = intact_earlier_checkpoint(newest)
        error = FileNotFoundError(said + _earlier_hint(earlier, option))
        error.earlier = earlier  # (what a caller may offer in place of its own advice)
        raise error
    return newest


_NUMBERED = re.compile(r'(iter|epoch)_(\d+)\.pth')


def checkpoint_number(path: str) -> Optional[Tuple[str, int]]:
    """``('iter', N)`` or ``('epoch', N)`` of a checkpoint named as mmengine's
    CheckpointHook names them (``iter_N.pth``, ``epoch_N.pth``; a file or a DeepSpeed
    folder), else None."""
    match = _NUMBERED.fullmatch(osp.basename(str(path).rstrip('/' + os.sep)))
    return (match[1], int(match[2])) if match else None


def newest_numbered_checkpoint(work_dir):
    """The highest-numbered ``iter_N.pth`` in ``work_dir`` (a file, or the folder a
    DeepSpeed run saves), else the highest ``epoch_N.pth``, or None: by the number,
    not the time, which a copy does not keep. (A run saves one kind or the other:
    mmengine's CheckpointHook by iteration or by epoch.)"""
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    if not osp.isdir(work_dir):
        return None
    found = {'iter': [], 'epoch': []}
    for name in os.listdir(work_dir):
        number = checkpoint_number(name)
        path = osp.join(work_dir, name)
        # a DeepSpeed folder with its optimizer shards (its save is not atomic: one cut
        # short has the model states alone)
        if number and (osp.isfile(path) or (is_zero_checkpoint(path) and any(
                f.endswith('optim_states.pt') for f in os.listdir(path)))):
            found[number[0]].append((number[1], path))
    kind = found['iter'] or found['epoch']
    return max(kind)[1] if kind else None


def check_checkpoint_complete(path: str, option: Optional[str] = '--resume') -> None:
    """Raise ValueError if a checkpoint file is truncated or not one of its kind.

    Cheap (reads the zip directory at the end of a torch file, the header of a
    ``.safetensors`` one, not the tensors), so a ``--resume`` (``--load-from``) of a
    file cut short fails at once with its name, before anything is built. A
    ``.safetensors`` file passed unchecked before: cut short, it failed in
    safetensors' reader after the Runner's start-up, in a raw traceback. The error
    names an earlier checkpoint beside it that passes the same check, where there is
    one (:func:`earlier_checkpoint_hint`; ``option``: the way to give it).
    """
    try:
        _check_complete(path)
    except ValueError as e:
        hint = earlier_checkpoint_hint(path, option)
        if not hint:
            raise
        raise ValueError(f'{e}{hint}') from None


def _check_complete(path: str) -> None:
    """:func:`check_checkpoint_complete` without naming an earlier checkpoint."""
    path = str(path)
    if path.endswith('.safetensors'):
        check_safetensors_file(path)
    elif not zipfile.is_zipfile(path):
        _check_pickle_start(path)


def intact_earlier_checkpoint(path: str) -> Optional[str]:
    """The newest checkpoint file saved before ``path`` (an ``iter_N.pth`` /
    ``epoch_N.pth`` cut short, empty or gone) in its folder: of its kind, with a lower
    N, passing :func:`check_checkpoint_complete`'s cheap check (newest first; a
    DeepSpeed folder is not taken). None where ``path`` is not numbered, or none is."""
    path = str(path).rstrip(os.sep)
    number = checkpoint_number(path)
    folder = osp.dirname(path)
    if number is None or not osp.isdir(folder or '.'):
        return None
    earlier = []
    for name in os.listdir(folder or '.'):
        found = checkpoint_number(name)
        if found and found[0] == number[0] and found[1] < number[1]:
            earlier.append((found[1], osp.join(folder, name)))
    for _, candidate in sorted(earlier, reverse=True):
        if not osp.isfile(candidate):
            continue
        try:
            _check_complete(candidate)
        except (OSError, ValueError):
            continue
        return candidate
    return None


def earlier_checkpoint_hint(path: str, option: Optional[str] = '--resume') -> str:
    """``'; an earlier checkpoint DIR/iter_4.pth is readable: --resume DIR/iter_4.pth'``
    to end the error about an unusable (or gone) checkpoint ``path`` with, where
    :func:`intact_earlier_checkpoint` finds one ('' otherwise); ``option`` None: without
    the way to give it (the caller says it). Before, the error said nothing of it."""
    return _earlier_hint(intact_earlier_checkpoint(path), option)


def _earlier_hint(earlier: Optional[str], option: Optional[str]) -> str:
    """:func:`earlier_checkpoint_hint`'s words for the checkpoint ``earlier`` found."""
    if earlier is None:
        return ''
    return f'; an earlier checkpoint {earlier} is readable' + (
        f': {option} {earlier}' if option else '')


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
                    fixed: Sequence[str] = ()) -> str:
    """The difference between two ``{name: shape}`` maps in one clause (the counts of
    weights of another shape, missing and extra, each with its first example, and
    what that says of the file: :func:`_kind_of_file`, :func:`_frames_hint`), or ''
    when they match. ``given`` is the checkpoint's, ``own`` the ``own_name``'s;
    ``fixed`` names tables whose length may differ at the same width
    (:func:`fine_tune_tables`).

    Weights the checkpoint has and the model has not read '21 the config has not
    (e.g. denoiser.temp_embed)' before; a video DiT's file for an image model (or the
    reverse) was not named as such."""
    differ = [k for k in given if k in own and tuple(own[k]) != tuple(given[k])
              and not (k in fixed and table_may_differ(k, own[k], given[k]))]
    differ.sort(key=lambda k: k in fixed)  # a learned weight is the telling example
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
            if 'learn_sigma' in _constructor_defaults(objective) else setting)


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
    found = weight_mismatch(own, given)
    if not found:
        return model.load_state_dict(state_dict, strict=True)
    tables = fine_tune_tables(model) if fine_tune else set()
    if tables and not weight_mismatch(own, given, fixed=tables):
        return _load_keeping_tables(model, state_dict, tables, source)
    hint = mismatch_hint(model, own, given, tables, objective)
    raise ValueError(f'{source}: its weights are not this model\'s: {found}'
                     + (f'; {hint}' if hint else ''))


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


def config_objective(model) -> Optional[str]:
    """The objective class name of a ``model`` config: its ``diffusion.type`` without
    a scope (``mmsora.GaussianDiffusion``), LatentDiffusion's default when it gives
    none, or None."""
    if not isinstance(model, dict):
        return None
    diffusion = model.get('diffusion') or dict(type='GaussianDiffusion')
    kind = diffusion.get('type') if isinstance(diffusion, dict) else None
    return kind.rpartition('.')[2] if isinstance(kind, str) else None


def trained_model_config(checkpoint) -> Optional[dict]:
    """The ``model`` config of the run that saved an mmengine ``checkpoint``, from the
    config text its ``meta`` holds, or None (not a run's, or text that is not a
    config).

    The text is read without importing its ``custom_imports``: the types are its
    names, whether or not the modules of a run of one's own import here. Before, they
    were imported (mmengine's ``Config.fromstring``), without the working directory
    on ``sys.path``, and a failure gave None: a run's recorded denoiser and objective
    went unchecked, and a wrong model loaded without a word."""
    text = ((checkpoint or {}).get('meta') or {}).get('cfg')
    if not isinstance(text, str):
        return None
    import tempfile

    from mmengine.config import Config
    # (a file closed before it is read: Windows opens a temporary file once)
    with tempfile.NamedTemporaryFile('w', encoding='utf-8', suffix='.py',
                                     delete=False) as f:
        f.write(text)
    try:
        model = Config.fromfile(f.name, import_custom_modules=False).get('model')
    except Exception:  # not the text of a config: nothing to tell
        return None
    finally:
        os.remove(f.name)
    return model.to_dict() if hasattr(model, 'to_dict') else model


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


def _constructor_defaults(objective) -> dict:
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
    defaults = _constructor_defaults(kind)
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
