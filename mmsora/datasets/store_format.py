"""Packed latent store format: sharded ``.npy`` arrays + a JSON index, read by memory map.

Layout of a store ``root/``::

    index.json              merged index (written by ``LatentStoreWriter.finalize``)
    parts/rank-00003.json   per-writer index parts (what each writer has finished)
    shard_00000.npy         latents of shard 0: (n, num_copies, K, *latent_shape)
    labels_00000.npy        int64 class ids of shard 0: (n,)
    text_00000.npy          optional text-encoder tokens of shard 0: (n, L, D)
    text_mask_00000.npy     optional bool token mask: (n, L)
    pooled_00000.npy        optional pooled text embeddings: (n, D2) (CLIP)

``K`` is 2 for ``content='moments'`` (scaled posterior mean, scaled posterior std) and
1 for ``content='samples'`` (one scaled posterior sample). ``num_copies`` is 1, or 2
when a horizontally flipped copy of every image was encoded too (copy 0 original,
copy 1 flipped), so flip augmentation is not frozen at extraction time.
``latent_shape`` is ``(C, H, W)`` (or ``(C, T, H, W)`` for video). bfloat16 is stored
as the raw uint16 bits.

Shard ``k`` holds source items ``[k * shard_size, min((k + 1) * shard_size, N))``
minus those that could not be read (listed in its ``skipped``), so the shard split
does not depend on how many processes wrote it: a run can be resumed with another
world size. Crash safety: a shard's files are written to temporary names, fsynced and
renamed into place, and only then listed in the writer's index part (itself replaced
atomically). A resumed writer trusts only listed shards; anything else is rewritten.
"""
import json

import numpy as np
import torch

__all__ = ['FORMAT', 'VERSION', 'DTYPES', 'CONTENTS', 'HEADER_KEYS', 'FINGERPRINT_KEY',
           'LATER_META_KEYS', 'UNRECORDED_TEXT_ENCODER_DTYPE', 'TEXT_FILES', 'TORCH_DTYPES', 'shard_name', 'labels_name',
           'text_name', 'encode_dtype', 'decode_dtype', 'nonfinite_counts',
           'nonfinite_stored', 'nonfinite_items', 'stored_tensor']

FORMAT = 'mmsora.latent_store'
VERSION = 1
DTYPES = ('float16', 'bfloat16', 'float32')
CONTENTS = ('moments', 'samples')
# Fields that must agree between a resumed writer, the parts on disk and the index.
HEADER_KEYS = ('format', 'version', 'dtype', 'latent_shape', 'content', 'num_copies',
               'scale_factor', 'shift_factor', 'vae', 'shard_size', 'num_source_items',
               'num_shards', 'text_shape', 'pooled_dim')
# Not in HEADER_KEYS: stores written before it was recorded have none, and resume (and
# keep none: LatentStoreWriter._kept_record).
FINGERPRINT_KEY = 'source_fingerprint'
# Extraction settings (``meta``) recorded only since a later version: a store whose
# meta lacks one resumes unchecked on it (it may have been written with any value).
# (classes: image stores always recorded theirs, video stores only since a later one.)
LATER_META_KEYS = ('hidden_layer', 'clips_per_video', 'video_reader', 'classes')
# The text encoder's dtype of a store whose meta records none (extract_features.py
# records text_encoder_dtype only where it is another: older stores were encoded in
# float32, HFTextEncoder's default).
UNRECORDED_TEXT_ENCODER_DTYPE = 'float32'


# --------------------------------------------------------------------------- #
#                                 File helpers                                 #
# --------------------------------------------------------------------------- #
def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'cannot read latent store index {path!r}: {e}') from None


def shard_name(shard_id):
    return f'shard_{shard_id:05d}.npy'


def labels_name(shard_id):
    return f'labels_{shard_id:05d}.npy'


# Optional per-shard text files: field -> file name prefix.
TEXT_FILES = dict(text_embeds='text', text_mask='text_mask', pooled_text_embeds='pooled')


def text_name(field, shard_id):
    return f'{TEXT_FILES[field]}_{shard_id:05d}.npy'


# --------------------------------------------------------------------------- #
#                                dtype encoding                                #
# --------------------------------------------------------------------------- #
TORCH_DTYPES = dict(float16=torch.float16, bfloat16=torch.bfloat16, float32=torch.float32)


def encode_dtype(x, dtype):
    """float array/tensor → the stored numpy array (bfloat16 as uint16 bits).

    A CPU tensor (or array) already in ``dtype`` is returned as a view, not copied: a
    writer that buffers a shard in the stored dtype (tools/extract_features.py) had
    it copied through float32 at 3x its size."""
    if isinstance(x, torch.Tensor) and x.dtype == TORCH_DTYPES[dtype]:
        x = x.detach().cpu().contiguous()
        return x.view(torch.int16).numpy().view(np.uint16) if dtype == 'bfloat16' \
            else x.numpy()
    if dtype == 'bfloat16':
        t = torch.as_tensor(x).float().to(torch.bfloat16)  # round to nearest even
        return t.view(torch.int16).numpy().view(np.uint16)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    with np.errstate(over='ignore'):  # (inf past float16's range: write_shard refuses it)
        return np.asarray(x).astype(dtype, copy=False)


def decode_dtype(a, dtype):
    """Stored numpy array → float32 array (a new array, never a view of the file)."""
    if dtype == 'bfloat16':
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.array(a, dtype=np.float32)


def nonfinite_counts(stored, dtype):
    """``{row: how many values}`` of the rows of a stored array ``(n, ...)`` (as
    :func:`encode_dtype` gives it) that hold NaN or inf in the stored dtype: a float32
    value past float16's range is inf once stored (tools/extract_features.py's rule)."""
    counts = np.zeros(len(stored), np.int64)
    for start in range(0, len(stored), 256):  # (a mask of 256 rows, not of a 1 GB shard)
        block = stored[start:start + 256]
        # bfloat16 as uint16 bits: all exponent bits set is inf or NaN
        bad = (block & 0x7F80) == 0x7F80 if dtype == 'bfloat16' else ~np.isfinite(block)
        counts[start:start + len(block)] = bad.reshape(len(block), -1).sum(1)
    return {int(row): int(counts[row]) for row in np.flatnonzero(counts)}


def _is_mask(value) -> bool:
    """Whether a field holds booleans (a text mask: no NaN or inf to hold)."""
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    return np.asarray(value).dtype == bool


def nonfinite_stored(fields, dtype):
    """``{row: (field, count, size)}`` of the items (rows) of stored arrays ``{field:
    (n, ...)}`` (as :func:`encode_dtype` gives them) that hold NaN or inf: the first
    such field of each, how many of its values, of how many. Boolean fields are passed
    over. The rule a writer refuses a shard by (:meth:`LatentStoreWriter.write_shard`)."""
    found = {}
    for field, stored in fields.items():
        if _is_mask(stored):
            continue
        for row, count in nonfinite_counts(stored, dtype).items():
            found.setdefault(row, (field, count, stored[row].size))
    return found


def nonfinite_items(fields, dtype):
    """:func:`nonfinite_stored` of float values ``{field: (n, ...) array or tensor}``
    not yet stored: each converted to ``dtype`` as the writer stores it first, so a
    float32 value past float16's range counts as inf. What a tool skips or refuses an
    item by before writing (tools/extract_features.py, convert_fastdit_features.py):
    before, extraction checked values in the dtype they were computed in, and the
    writer then refused a whole shard, stopping the run."""
    return nonfinite_stored({field: value if _is_mask(value) else encode_dtype(value, dtype)
                             for field, value in fields.items()}, dtype)


def stored_tensor(a, dtype):
    """Stored numpy array → torch tensor in the stored dtype (a new tensor, never a
    view of the file): float16 / bfloat16 stay half the bytes of float32."""
    a = np.array(a, dtype=np.asarray(a).dtype.newbyteorder('='))  # (torch: native order)
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) \
        if dtype == 'bfloat16' else torch.from_numpy(a)
