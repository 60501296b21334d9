"""Which weights a diffusers model folder (a ``ModelMixin``'s ``save_pretrained``) holds.

The one list of diffusers' weight-file names, read by every folder check and load: the
VAE wrappers (:mod:`mmsora.models.vaes.autoencoder_kl`), the Stable Cascade prior and
the diffusers DiT reader (:mod:`mmsora.utils.diffusers_dit`). Two lists disagreed: a
folder of ``diffusion_pytorch_model.bf16.safetensors`` alone was weights to the VAE and
none to the DiT reader. Names (diffusers' ``_add_variant``): plain
``diffusion_pytorch_model.safetensors`` (or ``.bin``); shards
``diffusion_pytorch_model-00001-of-00002.safetensors`` with their index
``diffusion_pytorch_model.safetensors.index.json``; a variant of either,
``diffusion_pytorch_model.fp16.safetensors``, shards
``diffusion_pytorch_model.fp16-00001-of-00002.safetensors``, index
``diffusion_pytorch_model.safetensors.index.fp16.json``. Shards count only with their
index and every shard it lists: a copy that lost its index, or a shard, passed the
checks and failed in diffusers ('no file named diffusion_pytorch_model.bin') at the
first decode, after the whole sampling.
"""
import json
import os
import os.path as osp
import re
from typing import List, NamedTuple, Optional

__all__ = ['FolderWeights', 'folder_weights', 'index_shards', 'WEIGHT_FILES_SAID']

_SINGLE = r'diffusion_pytorch_model(\.(?P<variant>\w+))?\.(?P<ext>safetensors|bin)'
_INDEX = r'diffusion_pytorch_model\.(?P<ext>safetensors|bin)\.index(\.(?P<variant>\w+))?\.json'
WEIGHT_FILES_SAID = ('diffusion_pytorch_model.safetensors or .bin, sharded with its '
                     '.index.json, or a variant such as diffusion_pytorch_model.fp16.safetensors')


class FolderWeights(NamedTuple):
    """The weights found: ``variant`` (None for the plain ones) and ``files``, the file
    names to read (one file, or the shards its index lists, sorted)."""
    variant: Optional[str]
    files: List[str]


def index_shards(path: str) -> list:
    """The sorted shard file names a diffusers shard index ``path`` lists in its
    ``weight_map``. Raises ValueError, in one line naming the file, where it is not such
    an index (cut short, empty, another JSON): json.load's 'Expecting value: line 1
    column 1 (char 0)' named no file."""
    try:
        with open(path, encoding='utf-8') as f:
            shards = sorted(set(json.load(f)['weight_map'].values()))
    except (ValueError, KeyError, TypeError, AttributeError):  # (ValueError: JSON, UTF-8)
        shards = []
    if not shards or not all(isinstance(name, str) and name for name in shards):
        raise ValueError(f'{path}: the shard index is damaged (cut short, empty or not '
                         'diffusers\' weight_map of the shards): copy it again, or save the '
                         'model again (save_pretrained writes it beside the shards)')
    return shards


def folder_weights(folder: str) -> Optional[FolderWeights]:
    """The weights diffusers loads from ``folder``: the plain ones first, else a variant
    (fp16 first, then by name); in each, a single file before a shard index, safetensors
    before bin. None where it holds none of them (:data:`WEIGHT_FILES_SAID`).

    Raises:
        ValueError: holding no whole set, a shard index is damaged (:func:`index_shards`).
        FileNotFoundError: holding no whole set, a shard index lists a shard that is not
            in ``folder``.
    """
    names = set(os.listdir(folder)) if osp.isdir(folder) else set()
    found = {}  # variant -> [(rank, kind, name)]
    for name in names:
        for kind, pattern in (('file', _SINGLE), ('index', _INDEX)):
            m = re.fullmatch(pattern, name)
            if m:
                rank = (kind == 'index', m['ext'] == 'bin')
                found.setdefault(m['variant'], []).append((rank, kind, name))
    order = sorted(found, key=lambda v: (v is not None, v != 'fp16', v or ''))
    problem = None
    for variant in order:
        for _, kind, name in sorted(found[variant]):
            if kind == 'file':
                return FolderWeights(variant, [name])
            try:
                shards = index_shards(osp.join(folder, name))
            except ValueError as e:
                problem = problem or e
                continue
            lost = [s for s in shards if s not in names]
            if not lost:
                return FolderWeights(variant, shards)
            problem = problem or FileNotFoundError(
                f'{osp.join(folder, name)} lists {len(lost)} shard(s) not in its folder '
                f'(e.g. {lost[0]}): copy them in beside it (or all the weights again)')
    if problem is not None:
        raise problem
    return None
