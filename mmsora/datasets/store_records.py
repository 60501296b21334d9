"""A latent store's records (``index.json``, ``parts/rank-*.json``) against a run's
settings: the refusals of a store written with others (:func:`check_recorded`) and what
a writer would find there (:func:`read_store_progress`)."""
import glob
import json
import os.path as osp

from .shard_files import sound_records
from .store_format import FINGERPRINT_KEY, HEADER_KEYS, LATER_META_KEYS, _read_json

__all__ = ['SourceChangedError', 'SourceCountError', 'PATH_SETTINGS', 'later_keys_lacking',
           'check_recorded', 'recorded_layer_form', 'read_store_progress']


class SourceChangedError(ValueError):
    """The source items (paths, captions, labels, their order) are not the ones a store
    was started from, though their number is."""


class SourceCountError(ValueError):
    """A store was begun from another number of source items (``num_source_items``)
    than a run has: ``recorded`` and ``given``, and the ``fingerprint`` of the items it
    was begun from (None where it records none), so that a tool can say what changed
    (tools/extract_features.py: rows added to a manifest)."""

    def __init__(self, message, recorded, given, fingerprint=None):
        super().__init__(message)
        self.recorded, self.given, self.fingerprint = recorded, given, fingerprint


def _other_settings(root, path, key, theirs, ours):
    return (f'{root!r} holds a latent store written with {key}={theirs!r} (in '
            f'{osp.relpath(path, root)}); this run has {key}={ours!r}: use another '
            'output folder or the same settings')


def _known_part(theirs, ours):
    """``ours`` with its unknown (None) entries taken from ``theirs``: a setting known
    in part before the models load (a text length, not the encoder's width)."""
    if (isinstance(ours, (list, tuple)) and None in ours and isinstance(theirs, list)
            and len(theirs) == len(ours)):
        return [t if o is None else o for t, o in zip(theirs, ours)]
    return ours


# Settings that name a folder: the same folder typed another way ('vae/', './vae', an
# absolute path) is the same setting (a rerun with one was refused).
PATH_SETTINGS = ('vae', 'text_encoder')


def _same(key, theirs, ours, their_meta=None, our_meta=None) -> bool:
    """Whether a recorded setting ``theirs`` and a run's ``ours`` are one. A
    hidden_layer, given the ``meta`` each is recorded in (its text encoder's kind and
    folder), is one hidden state as training takes it (:func:`same_hidden_layers`: a
    layer's positive index and its negative one, T5's -1 and None); a rerun with the
    other index of the store's layer was refused."""
    if theirs == ours:
        return True
    if key in PATH_SETTINGS and isinstance(theirs, str) and isinstance(ours, str) \
            and theirs and ours:
        return osp.realpath(theirs) == osp.realpath(ours)
    if key == 'hidden_layer' and their_meta is not None and our_meta is not None:
        from mmsora.models.text_encoders.hf_text_encoder import same_hidden_layers
        return same_hidden_layers(_layer_setting(their_meta, theirs),
                                  _layer_setting(our_meta, ours))
    return False


def _layer_setting(meta, layer):
    """``(kind, hidden_layer, folder)`` of a text encoder's ``layer`` recorded in (or
    run with) ``meta``, as :func:`same_hidden_layers` takes it."""
    return meta.get('text_encoder_kind', 't5'), layer, meta.get('text_encoder')


def _recorded_layers(recorded, meta):
    """``(the meta it is recorded in, value)`` of each hidden_layer a store file
    ``recorded`` records: its ``meta``'s, then each shard's own (an older store's:
    :meth:`LatentStoreWriter._kept_record`), with its text encoder (:func:`_shard_meta`)."""
    file_meta = recorded.get('meta')
    if file_meta is not None and 'hidden_layer' in file_meta:
        yield file_meta, file_meta['hidden_layer']
    for shard in recorded.get('shards') or ():
        own = shard.get('meta') or {}
        if 'hidden_layer' in own:
            yield _shard_meta(recorded, own, meta), own['hidden_layer']


def _shard_meta(recorded, own, meta):
    """The settings a shard's record ``own`` (its ``meta``) was written with, as far as
    they are known: its own, and the rest as its file ``recorded`` records them (the
    run's ``meta`` where the file records none: an older part that an index recording
    the run's settings vouches for)."""
    return dict(recorded.get('meta') or meta, **own)


def recorded_layer_form(recorded, meta):
    """``meta`` (a run's) with its hidden_layer as the store file ``recorded`` writes
    it where the two are one hidden state written otherwise (CLIP-L's 11 against a
    recorded -2): a resumed writer records the store's value. Recording its own, it
    left a store whose parts said 11 and whose index -2, read as two layers where the
    text encoder's folder is not at hand (another machine)."""
    if not meta or 'hidden_layer' not in meta:
        return meta
    ours = meta['hidden_layer']
    for their_meta, theirs in _recorded_layers(recorded, meta):
        if theirs != ours and _same('hidden_layer', theirs, ours, their_meta, meta):
            return dict(meta, hidden_layer=theirs)
    return meta


def later_keys_lacking(meta, recorded):
    """Keys of ``meta`` in :data:`LATER_META_KEYS` that ``recorded`` (an index or part
    with a ``meta``) lacks: written before they were recorded, its shards may hold any
    value of them, so they are not checked against it. (A file with no ``meta`` at all
    lacks none here: the index that vouches for it records them.)"""
    if not meta or 'meta' not in recorded:
        return set()
    return {k for k in LATER_META_KEYS if k in meta and k not in recorded['meta']}


def _vouching_index(root):
    """``root``'s index.json when it can vouch for a part that records no extraction
    settings (an older mmsora's): it records them (``meta``) and says the store is
    complete (one an older mmsora finished); else None."""
    path = osp.join(root, 'index.json')
    if not osp.exists(path):
        return None
    data = _read_json(path)
    return data if 'meta' in data and data.get('complete') else None


def _covered_by_index(root, recorded, path, index=None):
    """Whether ``recorded`` (a part at ``path``) lists only shards that ``index``
    (:func:`_vouching_index` of ``root`` when None) lists alike.

    Only a complete index vouches: an older mmsora's incomplete one may list shards
    resumed unchecked with other settings. So before a writer says a vouching index is
    incomplete, it records the index's ``meta`` in the parts it vouches for
    (:meth:`LatentStoreWriter.finalize`)."""
    if osp.abspath(path) == osp.abspath(osp.join(root, 'index.json')):
        return False
    index = _vouching_index(root) if index is None else index
    if index is None:
        return False
    listed = {int(s['id']): s for s in index['shards']}
    return all(listed.get(int(s['id'])) == s for s in recorded['shards'])


def check_recorded(root, recorded, path, settings, meta=None):
    """Refuse (ValueError naming the first setting that differs) a store file
    ``recorded`` (index or part at ``path``) written with other ``settings`` (header
    keys; those left out, or None inside a list, are not compared) or ``meta``;
    :class:`SourceChangedError` where both record a ``source_fingerprint`` and they
    differ. Given a ``meta``, a file that records none (an older mmsora's part) is
    refused unless index.json records one and lists its shards alike, and the settings
    a shard's own record holds (``meta``: :meth:`LatentStoreWriter._kept_record`) are
    compared too."""
    # The extraction settings (frame stride, fps, text encoder, ...): a rerun with
    # others kept the old latents. Before the header's: an option named there says what
    # differs (a header count follows from it).
    if meta and 'meta' not in recorded and not _covered_by_index(root, recorded, path):
        # Parts of older versions hold none: a store they left half-done was resumed
        # unchecked (another frame stride, reordered rows: a clip stored twice).
        raise ValueError(
            f'{root!r} holds a latent store begun by an older mmsora '
            f'({osp.relpath(path, root)} records no extraction settings), whose settings '
            "cannot be checked against this run's: use a new --out (or delete the folder "
            'to extract it again)')
    run_meta = None if meta is None else json.loads(json.dumps(meta))
    if 'meta' in recorded and run_meta is not None:
        theirs, unchecked = recorded['meta'], later_keys_lacking(run_meta, recorded)
        for key in sorted(set(run_meta) | set(theirs)):
            if key in unchecked:
                continue
            both = key in theirs and key in run_meta  # (a hidden_layer: recorded by both)
            if not _same(key, theirs.get(key), run_meta.get(key),
                         theirs if both else None, run_meta if both else None):
                raise ValueError(_other_settings(root, path, key, theirs.get(key),
                                                 run_meta.get(key)))
    if run_meta is not None:  # the settings a shard written into an older store records
        for shard in recorded.get('shards') or ():
            own = shard.get('meta') or {}
            for key, theirs in own.items():
                if not _same(key, theirs, run_meta.get(key), _shard_meta(recorded, own,
                             run_meta), run_meta if key in run_meta else None):
                    raise ValueError(_other_settings(root, path, key, theirs,
                                                     run_meta.get(key)))
    for key in HEADER_KEYS:
        if key not in settings:
            continue
        theirs = recorded.get(key)
        ours = _known_part(theirs, settings[key])
        if key == 'num_source_items' and theirs != ours:
            raise SourceCountError(_other_settings(root, path, key, theirs, ours), theirs,
                                   ours, recorded.get(FINGERPRINT_KEY))
        if not _same(key, theirs, ours):
            raise ValueError(_other_settings(root, path, key, theirs, ours))
    theirs, ours = recorded.get(FINGERPRINT_KEY), settings.get(FINGERPRINT_KEY)
    if theirs and ours and theirs != ours:
        raise SourceChangedError(
            f'{root!r} holds a latent store of other source items (source_fingerprint '
            f'{theirs[:12]}... in {osp.relpath(path, root)}; this run has {ours[:12]}...): '
            'they changed since it was started; use another output folder')


def _store_files(root):
    index = osp.join(root, 'index.json')
    return ([index] if osp.exists(index) else []) + sorted(
        glob.glob(osp.join(root, 'parts', 'rank-*.json')))


def read_store_progress(root, settings, meta=None, checked=()):
    """What a writer would find at ``root``, read before what its header needs (a VAE's
    latent shape) is known: None where no store was begun, else a dict of ``header``
    (the recorded one), ``done`` (sorted ids of the finished shards), ``shards`` (their
    records, in that order), ``num_shards``, ``num_items`` and ``num_skipped`` (in the
    finished shards), ``complete`` (index.json says every shard is there:
    :meth:`LatentStoreWriter.finalize` has nothing to add), ``unchecked`` (sorted
    keys of ``meta`` in :data:`LATER_META_KEYS` that a file written before they were
    recorded lacks: its shards may hold any value), ``damaged`` (``{id: (file name,
    what, detail)}`` of the recorded shards whose files :func:`check_file` finds wrong:
    they are not in ``done``, so a writer writes them again) and ``checked`` (the
    :func:`record_key` of each record whose files passed: a writer given them,
    ``LatentStoreWriter(checked=...)``, does not check those files again; nor does a
    second read given them, ``checked=``).

    Every index and part is checked as :func:`check_recorded` does (the same refusals a
    writer gives), so each torchrun rank, reading them before any rank writes, decides
    the same."""
    paths = _store_files(root)
    if not paths:
        return None
    records, header, indexed, unchecked, checked = {}, None, False, set(), set(checked)
    for path in paths:
        data = _read_json(path)
        check_recorded(root, data, path, settings, meta)
        unchecked.update(later_keys_lacking(meta, data))
        header = header or {k: data.get(k) for k in (*HEADER_KEYS, FINGERPRINT_KEY)}
        if osp.basename(path) == 'index.json':
            indexed = bool(data.get('complete'))
        for shard in data['shards']:
            records.setdefault(int(shard['id']), []).append(shard)
    done, damaged = sound_records(root, records, header, checked)
    return dict(header=header, done=sorted(done), shards=[done[k] for k in sorted(done)],
                num_shards=header['num_shards'],
                num_items=sum(s['count'] for s in done.values()),
                num_skipped=sum(len(s['skipped']) for s in done.values()),
                complete=indexed and len(done) == header['num_shards'],
                unchecked=sorted(unchecked), damaged=dict(sorted(damaged.items())),
                checked=checked)
