"""Checkpoint io: read released / fast-DiT / mmengine checkpoints without running pickle code.

Every ``.pt`` / ``.pth`` file is read with ``torch.load(weights_only=True)``, so a
checkpoint can hold tensors and plain containers but never code that runs on load;
every ``.safetensors`` file through :func:`read_safetensors`. A file that cannot be
read is named in one line saying what it is (cut short, the other format, text).
Also here: the local model folders checkpoints are read beside (a Hugging Face cache's
snapshot, a diffusers folder's config.json: hub_snapshot, folder_model,
local_pretrained_kwargs).

Beside it: checkpoint_choice.py (which checkpoint of a work dir to take),
weight_loading.py (a file's weights into a model, with shape hints),
trained_settings.py (what a checkpoint records of its training)."""
import json
import os
import os.path as osp
import pickle
import zipfile
from typing import Optional, Sequence, Union

import torch

__all__ = ['hub_snapshot', 'local_pretrained_kwargs', 'read_json_config', 'folder_model',
           'not_a_checkpoint_folder', 'load_checkpoint_file', 'check_pickle_start',
           'check_safetensors_file', 'read_safetensors']


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
    encoder: its config.json) is named as such, and what a DiTPipeline folder lacks
    (its transformer/, or there the config.json). Before, the tools said 'checkpoint
    not found' of a folder that exists, or listed the kinds without the diffusers
    one. A diffusers DiT folder (or DiTPipeline folder) is read whatever it lacks,
    :func:`~mmsora.utils.diffusers_dit.read_diffusers_dit` saying that of its
    weights."""
    holds = folder_model(path)
    if holds:
        return (f'{path} holds a {holds} (its config.json), not a denoiser\'s weights: give '
                'a checkpoint file, a work dir, a DeepSpeed checkpoint folder or a diffusers '
                'DiT folder')
    index = read_json_config(osp.join(path, 'model_index.json'))
    if index is not None and index.get('_class_name') == 'DiTPipeline':  # (not its DiT)
        return _broken_dit_pipeline(path)
    if index is not None and isinstance(index.get('_class_name'), str):  # (a pipeline's)
        return (f'{path} holds a diffusers {index["_class_name"]} (its model_index.json), '
                'not a DiT\'s: give a checkpoint file, a work dir, a DeepSpeed checkpoint '
                'folder or a diffusers DiT folder (a DiTPipeline, or its transformer/)')
    from mmsora.utils.diffusers_weights import folder_weights
    try:  # (the names diffusers reads: variants of any name, shards with their index)
        found = folder_weights(path)
    except (ValueError, FileNotFoundError):  # (a damaged or part set: weights all the same)
        found = None
    weights = found.files[0] if found else None
    if weights is not None:  # (its file then said 'give the transformer folder')
        return (f'{path}: diffusers weights ({weights}) without the config.json they were '
                'saved with: put it back beside them (save_pretrained writes both)')
    return (f'{path}: a folder that is neither a work dir with a checkpoint '
            '(last_checkpoint, iter_N.pth), a DeepSpeed checkpoint folder nor a diffusers DiT '
            'folder: give a checkpoint file')


def _broken_dit_pipeline(path: str) -> str:
    """What a diffusers DiTPipeline folder lacks that the tools read its DiT from: its
    ``transformer/``, or there its config.json (or the weights beside it). It was told
    it held 'a DiTPipeline, not a DiT's: give ... a DiTPipeline'. (One whose
    transformer/ has its DiT's config.json is read, weights or not:
    :func:`~mmsora.utils.checkpoint_choice.resolve_checkpoint` takes it.)"""
    from mmsora.utils.diffusers_dit import missing_dit_weights
    where = f'{path} holds a diffusers DiTPipeline (its model_index.json)'
    transformer = osp.join(path, 'transformer')
    if not osp.isdir(transformer):
        return (f'{where} without its transformer/ folder (the DiT\'s config.json and '
                'weights): copy it back, or give the DiT\'s checkpoint file')
    holds = folder_model(transformer)
    if holds:  # (a config.json that names no DiT class)
        return (f'{where} whose transformer/ holds a {holds} (its config.json), not a '
                'diffusers DiTTransformer2DModel: give a DiT\'s pipeline or checkpoint')
    config = osp.join(transformer, 'config.json')
    if not osp.isfile(config):
        lacks = 'no config.json'
    elif read_json_config(config) is None:
        lacks = 'a config.json that is not a JSON object'
    else:
        lacks = 'a config.json that names no model class (_class_name)'
    weights = missing_dit_weights(transformer)
    if weights:
        lacks += f' and {weights}'
    return (f'{where} whose transformer/ has {lacks}: put back what save_pretrained wrote '
            'there (config.json beside the weights)')


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
        FileNotFoundError: ``path`` does not exist, is a diffusers DiT folder
            without its weights (:func:`~mmsora.utils.diffusers_dit.missing_dit_weights`),
            or is a folder of another kind: a work dir, a DeepSpeed checkpoint folder or
            any other, named with what to give (:func:`_folder_not_read`).
        pickle.UnpicklingError: The file holds objects that weights-only loading
            refuses (anything but tensors and plain containers).
        ValueError: The file is truncated, damaged or not a torch checkpoint (named
            ``.safetensors``: not a whole safetensors file, :func:`read_safetensors`),
            diffusers DiT weights the original's layout cannot hold, or such a
            folder's shard index damaged.
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
    if osp.isdir(path):  # (it said 'checkpoint file not found' of a folder that exists)
        raise FileNotFoundError(_folder_not_read(path))
    obj = _read_file(path, map_location, safe_globals, mmap)
    if diffusers_dit.is_diffusers_dit(obj):  # its weights file, named alone
        config = read_json_config(osp.join(osp.dirname(path), 'config.json'))
        return diffusers_dit.dit_state_from_diffusers(obj, config, path)
    return obj


def _folder_not_read(path: str) -> str:
    """What a folder given to :func:`load_checkpoint_file` (which reads files and
    diffusers DiT folders) is, and what to give instead: a DeepSpeed checkpoint folder
    (its converted file), a work dir (its newest checkpoint, named), any other folder
    (:func:`not_a_checkpoint_folder`). ``model.pretrained_denoiser``, which reads its
    path here as it is (the tools resolve theirs first:
    :func:`~mmsora.utils.checkpoint_choice.resolve_checkpoint`), said 'checkpoint file
    not found' of them all."""
    from mmsora.utils.checkpoint_choice import saved_checkpoint
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    convert = 'convert it with tools/zero_to_state_dict.py and give the file it writes'
    if is_zero_checkpoint(path):
        return f'{path}: a DeepSpeed checkpoint folder: {convert}'
    try:
        newest = saved_checkpoint(path, option=None)
    except FileNotFoundError as e:  # (its last_checkpoint names a file gone)
        return f'{e}: give the checkpoint file'
    if newest is None:
        return not_a_checkpoint_folder(path)
    if is_zero_checkpoint(newest):
        return (f'{path}: a work dir, its newest checkpoint {newest} a DeepSpeed checkpoint '
                f'folder: {convert}')
    return f'{path}: a work dir, not a checkpoint file: give its checkpoint file ({newest})'


def _read_file(path: str, map_location, safe_globals: Sequence = (), mmap: bool = True):
    """One file of :func:`load_checkpoint_file`, as it is."""
    if not osp.isfile(path):
        from mmsora.utils.checkpoint_choice import stopped_replace_hint
        raise FileNotFoundError(f'checkpoint file not found: {path}'
                                f'{stopped_replace_hint(path)}')
    if path.endswith('.safetensors'):
        return read_safetensors(path, map_location)
    zipped = zipfile.is_zipfile(path)
    if not zipped:
        check_pickle_start(path)
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


def check_pickle_start(path: str) -> None:
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
