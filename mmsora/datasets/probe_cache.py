"""Probing many videos once: ``probe_all`` probes each file (frame count, fps, size;
first frame decoded) on threads and keeps every outcome in a cache file as it
finishes, so that a run stopped half way (Ctrl-C, a crash) or rerun after clips were
added probes only the files not probed before. ``tools/make_manifest.py`` keeps its
cache beside the manifest, ``OUT.probes.jsonl``.

The cache: a first line ``{"probe_cache": PROBE_CACHE_VERSION}``, then one line per
probed file: ``{"path": absolute path, "stat": [size, mtime_ns], "info": {...}}`` or
``"reason": "..."`` in place of ``info`` for a file that is not a readable video. A
change of what :func:`~mmsora.utils.video_io.probe_video` checks bumps the version.
"""
import json
import os
import os.path as osp
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm import tqdm

from mmsora.utils.cli import Interrupted, plural
from mmsora.utils.video_io import VideoReadError, probe_video

__all__ = ['PROBE_CACHE_VERSION', 'probe', 'probe_all', 'read_probe_cache']

# 2: probes give the size as shown (rotation, non-square pixels) and count the frames an
# mp4's edit list keeps: version 1's entries are probed again.
PROBE_CACHE_VERSION = 2


def probe(path):
    """``(probe_video's dict, None, stat)``, or ``(None, the error, stat)`` of a file
    that cannot be read; ``stat`` is the file's ``[size, mtime_ns]`` where the outcome
    is the file's own, None where it may change without the file changing: the file
    missing, or a read refused (permissions, an I/O error on a network disk)."""
    try:  # before the probe: a file rewritten while probed is probed again next time
        st = os.stat(path)
        stat = [st.st_size, st.st_mtime_ns]
    except OSError:
        stat = None  # (probe_video names what is wrong)
    try:
        return probe_video(path), None, stat
    except VideoReadError as e:
        return None, e, None if isinstance(e.__context__, OSError) else stat
    except OSError as e:
        return None, e, None


def read_probe_cache(path) -> dict:
    """``{absolute path: entry}`` of an earlier run's probes; empty when there is no
    cache or one of another version. A line cut short (a run killed while writing it)
    is passed over."""
    entries = {}
    try:
        with open(path, encoding='utf-8') as f:
            lines = iter(f)
            head = _json_line(next(lines, ''))
            if head is None or head.get('probe_cache') != PROBE_CACHE_VERSION:
                return {}
            for line in lines:
                entry = _json_line(line)
                if entry is not None and isinstance(entry.get('path'), str):
                    entries[entry['path']] = entry
    except (OSError, UnicodeDecodeError):
        return {}
    return entries


def _json_line(line):
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _cache_line(path, outcome) -> str:
    info, error, stat = outcome
    entry = dict(path=osp.abspath(path), stat=stat)
    entry.update(dict(info=info) if info is not None else dict(reason=error.reason))
    return json.dumps(entry, ensure_ascii=False) + '\n'


def _cached_outcome(entry, path):
    """The cached ``probe`` outcome of ``path`` if the file is unchanged, else None."""
    if entry is None or entry.get('stat') is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    if entry['stat'] != [stat.st_size, stat.st_mtime_ns]:
        return None
    if entry.get('info') is not None:
        return entry['info'], None, entry['stat']
    return None, VideoReadError(path, str(entry.get('reason'))), entry['stat']


def open_probe_cache(cache, paths, outcomes, prog, kept=()):
    """Rewrite ``cache`` with the outcomes already known (this run's files and the
    ``kept`` entries: a file gone is dropped) and return it open for appending, or
    None, with a warning, where it cannot be written (a read-only folder: the run goes
    on without it)."""
    from mmsora.utils.atomic_io import atomic_write_bytes
    head = json.dumps(dict(probe_cache=PROBE_CACHE_VERSION)) + '\n'
    known = ''.join(_cache_line(p, outcomes[p]) for p in paths if outcomes[p] is not None)
    known += ''.join(json.dumps(entry, ensure_ascii=False) + '\n' for entry in kept)
    try:
        atomic_write_bytes(cache, (head + known).encode('utf-8'))
        return open(cache, 'a', encoding='utf-8')
    except OSError as e:
        print(f'{prog}: warning: cannot keep the probes in {cache} ({e.strerror or e}); '
              'probing without it: a rerun probes every video again', file=sys.stderr)
        return None


def probe_all(paths, workers, cache, reprobe=False, prog='mmsora', keep=()):
    """``probe`` of each path, in order, taking unchanged files' outcomes from the
    ``cache`` file (keyed by absolute path) and appending each new probe to it as it
    finishes; ``prog`` starts the lines printed to stderr. The cached probes of the
    files in ``keep`` (not probed in this run: make_manifest's videos left out for
    want of a caption) stay in the cache while the files are unchanged. A Ctrl-C raises
    :class:`~mmsora.utils.cli.Interrupted` saying how many probes are kept.

    Before, the probes of a run lived in memory only: a Ctrl-C or a crash an hour into
    100k clips (a container without a frame count is decoded whole) lost them all, and
    a rerun after adding a few clips probed every clip again."""
    old = {} if reprobe else read_probe_cache(cache)
    outcomes = {p: _cached_outcome(old.get(osp.abspath(p)), p) for p in paths}
    kept = [old[osp.abspath(p)] for p in keep if _cached_outcome(old.get(osp.abspath(p)), p)]
    del old
    todo = [p for p in paths if outcomes[p] is None]
    if len(todo) < len(paths):
        print(f'{prog}: {len(paths) - len(todo)} of {plural(len(paths), "video")} '
              f'probed by an earlier run ({cache}); probing {len(todo)}', file=sys.stderr)
    f = open_probe_cache(cache, paths, outcomes, prog, kept)

    def keep(path, future):
        if outcomes[path] is not None:  # kept already
            return
        outcomes[path] = future.result()
        if f is not None and outcomes[path][2] is not None:
            f.write(_cache_line(path, outcomes[path]))
            f.flush()

    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = {pool.submit(probe, p): p for p in todo}
            try:
                for future in tqdm(as_completed(futures), total=len(todo),
                                   desc='probing videos', unit='video', file=sys.stderr):
                    keep(futures[future], future)
            except BaseException as e:  # Ctrl-C, or a probe's unforeseen error
                for future in futures:
                    future.cancel()
                pool.shutdown(wait=True)  # the probes running finish: keep them too
                for future, path in futures.items():
                    if future.done() and not future.cancelled() and \
                            future.exception() is None:
                        keep(path, future)
                if isinstance(e, KeyboardInterrupt) and f is not None:
                    done = sum(outcomes[p] is not None for p in paths)
                    raise Interrupted(f'({done} of {plural(len(paths), "video")} probed, '
                                      f'kept in {cache}: rerun the same command to probe '
                                      'the rest)') from None
                raise
    finally:
        if f is not None:
            f.close()
    return [outcomes[p] for p in paths]
