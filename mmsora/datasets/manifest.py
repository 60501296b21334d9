"""Video manifests: one row per video, as CSV or JSON Lines (chosen by extension).

The columns follow Open-Sora's data CSVs: ``path`` (required), ``caption`` (Open-Sora
calls it ``text``; both are read, and ``text`` is returned as ``caption``), ``label``
(int class id), and the probed ``num_frames``, ``fps``, ``height``, ``width``. Other
columns are kept as strings. Example (``tools/make_manifest.py`` writes these)::

    path,caption,label,num_frames,fps,height,width
    clips/bikes.mp4,people riding bikes,0,250,25.0,272,640

An Open-Sora CSV (``path,text,num_frames,height,width,aspect_ratio,fps,resolution,aes``)
is a manifest as it is, by design: ``text`` is read as the caption, the known columns
are typed, and the others (``aspect_ratio``, ``aes``, ...) are kept as strings.

Relative paths resolve against ``data_root`` when given, else against the folder that
holds the manifest, so a manifest moved together with its videos keeps working.
"""
import csv
import difflib
import json
import os
import os.path as osp

__all__ = ['MANIFEST_COLUMNS', 'VIDEO_EXTENSIONS', 'ManifestError', 'load_manifest',
           'write_manifest']

# Known columns, in the order they are written, with their types.
MANIFEST_COLUMNS = dict(path=str, caption=str, label=int, num_frames=int, fps=float,
                        height=int, width=int)
# Other projects' names for our columns.
# The files tools/make_manifest.py lists as videos by default (and extract_features.py
# takes for videos in a --data-path meant for pictures).
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm')
_ALIASES = dict(text='caption')
_EXTENSIONS = ('.csv', '.jsonl')


class ManifestError(ValueError):
    """A malformed manifest; the message names the file, line and column."""


def _format(path):
    ext = osp.splitext(path)[1].lower()
    if ext not in _EXTENSIONS:
        raise ManifestError(f'manifest {path}: unknown format {ext!r}; use a .csv or '
                            '.jsonl file')
    return ext[1:]


def _suggest(name, columns):
    """' (did you mean 'x'?)' for the column nearest to ``name``, or ''."""
    columns = [c for c in columns if c]
    close = difflib.get_close_matches(name, columns, n=1, cutoff=0.5)
    close = close or [c for c in columns if name in c.lower()]
    return f" (did you mean {close[0]!r}?)" if close else ''


def _read_csv(path):
    """Yield ``(line number, row dict)``; the header is line 1."""
    with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: Excel's BOM
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for row in reader:
            if None in row:  # more fields than the header names
                raise ManifestError(
                    f'manifest {path} line {reader.line_num}: {len(columns) + len(row[None])}'
                    f' fields but the header names {len(columns)} columns (quote values '
                    'holding commas)')
            yield reader.line_num, columns, row


def _read_jsonl(path):
    with open(path, encoding='utf-8-sig') as f:
        for line_num, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f'manifest {path} line {line_num}: invalid JSON '
                                    f'({e.msg} at column {e.colno})') from None
            if not isinstance(row, dict):
                raise ManifestError(f'manifest {path} line {line_num}: expected a JSON '
                                    f'object, got {type(row).__name__}')
            yield line_num, list(row), row


def _convert(value, kind, where):
    """Cast a manifest cell to ``kind`` (int or float); ``where`` prefixes errors."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ManifestError(f'{where}: {value!r} is not a number')
    try:
        number = float(value)
    except ValueError:
        raise ManifestError(f'{where}: {value!r} is not a number') from None
    if kind is int:
        if not number.is_integer():
            raise ManifestError(f'{where}: {value!r} is not an integer')
        return int(number)
    return number


def load_manifest(path, data_root=None, require=('path', )):
    """Read a CSV or JSONL manifest into a list of rows.

    Args:
        path (str): ``.csv`` (header on line 1) or ``.jsonl`` (one object per line).
        data_root (str, optional): Folder that relative ``path`` values resolve
            against; defaults to the manifest's folder.
        require (Sequence[str]): Columns every row must hold a non-empty value for,
            e.g. ``('path', 'caption')`` for text-to-video training.

    Returns:
        list[dict]: One dict per row: ``path`` (resolved), typed known columns
        (see ``MANIFEST_COLUMNS``), other columns as read. Empty cells are left out.

    Raises:
        FileNotFoundError: the manifest does not exist.
        ManifestError: naming the file, line and column of the first problem (missing
            column, with the nearest existing name; empty manifest; bad number; empty
            required value), and what to do where it is a missing caption or value.
    """
    if not osp.isfile(path):
        folder = path if osp.isdir(path) else osp.dirname(path)
        if osp.isfile(osp.join(folder, 'index.json')):  # (a latent store given as data)
            raise FileNotFoundError(f'manifest not found: {path}: {folder} is a latent store '
                                    '(index.json): train on it with PackedLatentDataset')
        if osp.isdir(path):
            raise FileNotFoundError(f'manifest not found: {path} is a folder: give the .csv '
                                    'or .jsonl in it (tools/make_manifest.py writes one)')
        raise FileNotFoundError(f'manifest not found: {path}')
    reader = _read_csv if _format(path) == 'csv' else _read_jsonl
    root = osp.dirname(osp.abspath(path)) if data_root is None else data_root
    require = tuple(_ALIASES.get(c, c) for c in require)
    if 'path' not in require:
        require = ('path', ) + require
    try:
        return _load_rows(path, reader, root, require)
    except UnicodeDecodeError as e:
        raise ManifestError(f'manifest {path} is not UTF-8 text ({e.reason} at byte '
                            f'{e.start})') from None


def _check_columns(path, where, columns, require, row=None):
    """Refuse ``columns`` lacking a required one: a CSV's header (``row`` None) or a
    JSONL row (``row``: its index). In a JSONL row after the first, a key left out
    without a close name is the row's empty value (make_manifest leaves a null caption
    out), left to the empty-value check; before, it was a 'missing required column'."""
    present = {_ALIASES.get(c, c) for c in columns}
    for name in require:
        if name not in present:
            suggest = _suggest(name, columns)
            if row and not suggest:
                continue
            hint = ''
            if name == 'caption':  # before: nothing said that 'text' is read as it too
                hint = (": add a caption column, 'caption' or Open-Sora's 'text' (read as "
                        'the caption too); tools/make_manifest.py --captions writes one'
                        if row is None else ": give the row a 'caption' (or Open-Sora's "
                        "'text', read as the caption too) or drop the row")
            elif row is None and any(str(c).strip().lower().endswith(VIDEO_EXTENSIONS)
                                     for c in columns):
                # (Open-Sora 1.0's CSVs have no header: their first row was read as one)
                hint = (': line 1 names a video, so it is a row, not a header: add a '
                        "header line first ('path,text' for rows of a video and its "
                        "caption, as Open-Sora 1.0's CSVs hold them)")
            raise ManifestError(f'manifest {path} {where}: missing required column '
                                f'{name!r}{suggest}{hint}')


def _empty_value(path, line_num, name, columns):
    """The error of a row without a value for the required column ``name``; before,
    it did not say what to do."""
    label, why = repr(name), 'every row needs one'
    if name == 'caption' and 'caption' not in columns and 'text' in columns:
        label, why = "'text'", 'the caption; every row needs one'  # Open-Sora's name
    drop = (' (tools/make_manifest.py --skip-uncaptioned leaves such videos out)'
            if name == 'caption' else '')
    return ManifestError(f'manifest {path} line {line_num}: empty {label} ({why}): fill '
                         f'in the {name} or drop the row{drop}')


def _load_rows(path, reader, root, require):
    if reader is _read_csv:  # check the header even when no row follows it
        with open(path, newline='', encoding='utf-8-sig') as f:
            header = next(csv.reader(f), [])
        if header:
            _check_columns(path, 'line 1 (header)', header, require)
    rows = []
    for line_num, columns, raw in reader(path):
        if reader is _read_jsonl:
            _check_columns(path, f'line {line_num}', columns, require, row=len(rows))
        row = {}
        for key, value in raw.items():
            key = _ALIASES.get(key, key)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            kind = MANIFEST_COLUMNS.get(key)
            if kind in (int, float):
                value = _convert(value, kind, f'manifest {path} line {line_num} column '
                                 f'{key!r}')
            elif kind is str and not isinstance(value, str):
                value = str(value)
            row[key] = value
        for name in require:
            if name not in row:
                raise _empty_value(path, line_num, name, columns)
        row['path'] = osp.normpath(osp.join(root, osp.expanduser(row['path'])))
        rows.append(row)
    if not rows:
        raise ManifestError(f'manifest {path} is empty: it holds no rows')
    return rows


def write_manifest(rows, path, relative_to=None):
    """Write rows to a CSV or JSONL manifest (by ``path``'s extension).

    Args:
        rows (Sequence[dict]): Rows with at least ``path``; None values are left out.
        path (str): Output ``.csv`` or ``.jsonl`` file; its folder is created.
        relative_to (str, optional): Write each ``path`` relative to this folder
            (e.g. the manifest's own folder, which ``load_manifest`` resolves against
            by default). A relative row path names a file as any path given to a
            Python function does, from the working folder (``~`` expanded), and is
            written so as to name the same file from ``relative_to``. Defaults to
            None: paths as given.
    """
    fmt = _format(path)
    if not rows:
        raise ManifestError(f'manifest {path}: no rows to write')
    out_rows = []
    for i, row in enumerate(rows):
        if not row.get('path'):
            raise ManifestError(f'manifest {path}: row {i} has no path')
        row = {k: v for k, v in row.items() if v is not None}
        if relative_to is not None:
            # (~ expanded, as load_manifest expands it: '~/v.mp4' was written as
            # '../~/v.mp4' from the working folder, a file that does not exist)
            row['path'] = osp.relpath(osp.abspath(osp.expanduser(row['path'])),
                                      osp.abspath(osp.expanduser(relative_to)))
        out_rows.append(row)
    columns = [c for c in MANIFEST_COLUMNS if any(c in r for r in out_rows)]
    for r in out_rows:
        columns += [c for c in r if c not in columns]
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', newline='', encoding='utf-8') as f:
        if fmt == 'csv':
            writer = csv.DictWriter(f, fieldnames=columns, restval='')
            writer.writeheader()
            writer.writerows(out_rows)
        else:
            for r in out_rows:
                f.write(json.dumps({c: r[c] for c in columns if c in r},
                                   ensure_ascii=False) + '\n')
