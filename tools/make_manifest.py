"""Scan a folder of videos into a CSV/JSONL manifest for ``VideoDataset``.

Every video is probed (frame count, fps, size; its first frame decoded) so unreadable
files (and pictures renamed to a video extension) are found now and left out, not in a
training worker; the full list of them, with the reasons, goes to ``OUT.skipped.txt``.
Paths are written relative to the manifest's folder (``--absolute`` for absolute
paths), which is where ``load_manifest`` resolves them by default. Links to folders
are followed (datasets kept on another disk), each real folder once.

Each probe is appended to ``OUT.probes.jsonl`` as it finishes: a run stopped half way
(Ctrl-C, a crash) and a rerun after clips were added probe only the videos not
probed before (a file whose size or modification time changed is probed again;
``--reprobe`` probes all).

Examples::

    python tools/make_manifest.py data/ucf101/videos --out data/ucf101/train.csv \\
        --label-from-folder --workers 8
    python tools/make_manifest.py data/clips --out data/clips.jsonl \\
        --captions data/captions.json          # {"sub/clip_0001.mp4": "a dog ...", ...}
    python tools/make_manifest.py data/clips --out data/clips.csv \\
        --caption-files --skip-uncaptioned     # data/clips/a.mp4 + data/clips/a.txt
"""
import collections
import json
import os
import os.path as osp
import posixpath
import sys

from mmsora.datasets.manifest import (VIDEO_EXTENSIONS, ManifestError, load_manifest,
                                      write_manifest)
from mmsora.datasets.probe_cache import probe_all
from mmsora.datasets.utils import natural_sort_key
from mmsora.utils.cli import ArgumentParser, UserError, plural, read_user_text, run_cli

PROG = 'make_manifest.py'
EXTENSIONS = ','.join(ext.lstrip('.') for ext in VIDEO_EXTENSIONS)  # mp4,avi,...


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description='Probe every video under a '
                                'folder and write a manifest (CSV or JSONL by --out).')
    p.add_argument('video_dir', metavar='VIDEO_DIR', help='folder scanned recursively')
    p.add_argument('--out', required=True, help='manifest file: .csv or .jsonl')
    p.add_argument('--captions', help='JSON file mapping a video path relative to '
                   'VIDEO_DIR (or a file name that only one video has) to its caption, '
                   'or to null (or "") for none')
    p.add_argument('--caption-files', action='store_true',
                   help="read each video's caption from the text file beside it of the "
                   'same name ending in .txt (clip_0001.mp4 -> clip_0001.txt), as kohya, '
                   'diffusion-pipe and musubi-tuner datasets keep them; a missing or empty '
                   'file means no caption')
    p.add_argument('--skip-uncaptioned', action='store_true',
                   help='leave the videos without a caption out of the manifest (listed in '
                   'OUT.skipped.txt; not probed) instead of writing rows without one, which '
                   'text-to-video extraction and training refuse')
    p.add_argument('--label-from-folder', action='store_true',
                   help='label = index of the top-level folder under VIDEO_DIR in the '
                   'sorted folder names (ImageFolder rule); adds a class_name column')
    p.add_argument('--extensions', default=EXTENSIONS,
                   help=f'comma-separated video extensions (default {EXTENSIONS})')
    p.add_argument('--workers', type=int, default=4, help='probing threads')
    p.add_argument('--absolute', action='store_true',
                   help='write absolute paths instead of paths relative to the manifest')
    p.add_argument('--reprobe', action='store_true',
                   help='probe every video again instead of taking what OUT.probes.jsonl '
                   'holds from an earlier run')
    return p.parse_args(argv)


def scan_videos(video_dir, extensions):
    """Sorted paths (relative to ``video_dir``) of the files with these extensions, and
    the number of folder links left out (see :func:`walk_folders`)."""
    if osp.isfile(video_dir):  # before: 'video folder not found', of a file that exists
        raise UserError(f'{video_dir} is a file, not a folder: give the folder that '
                        'holds the videos')
    if not osp.isdir(video_dir):
        raise UserError(f'video folder not found: {video_dir}')
    exts = tuple('.' + e.strip().lower().lstrip('.') for e in extensions.split(',')
                 if e.strip())
    folders, skipped_links = walk_folders(video_dir)
    found = [osp.relpath(osp.join(folder, f), video_dir) for folder, files in folders
             for f in files if f.lower().endswith(exts)]
    if not found:
        raise UserError(f'no videos ({", ".join(exts)}) under {video_dir}')
    return sorted(found, key=natural_sort_key), skipped_links


def walk_folders(root):
    """``[(folder, file names)]`` for each real folder under ``root`` once, and the
    number of folder links not followed.

    Before, ``os.walk(followlinks=True)`` went into every link: ``ln -s .. loop`` in a
    class folder multiplied the tree (1229 rows from 30 clips, paths of 485
    characters) and a linked class folder listed its videos twice. Now the real
    folders of the tree come first, then the links, breadth first; a link is followed
    (datasets on another disk are linked in) unless its folder was listed already or
    holds the link itself (a loop).
    """
    seen, listed, skipped_links = set(), [], 0
    folders, links = collections.deque([root]), collections.deque()
    while folders or links:
        is_link = not folders
        folder = links.popleft() if is_link else folders.popleft()
        real = osp.realpath(folder)
        if real in seen or (is_link and _contains(real, osp.dirname(folder))):
            skipped_links += is_link
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # an unreadable folder, passed over as os.walk does
            continue
        for entry in entries:
            if entry.is_dir():
                (links if entry.is_symlink() else folders).append(entry.path)
        listed.append((folder, [e.name for e in entries if not e.is_dir()]))
    return listed, skipped_links


def _contains(real_folder, path):
    """Whether ``path`` lies in ``real_folder`` (a real path), links resolved."""
    real = osp.realpath(path)
    return real == real_folder or real.startswith(real_folder.rstrip(os.sep) + os.sep)


def read_caption_files(video_dir, rel_paths):
    """``--caption-files``: each video's caption from ``NAME.txt`` beside it (UTF-8, a
    byte-order mark dropped, lines joined by spaces), None where there is no such file
    or it holds only whitespace. A file that cannot be read as text stops the run
    naming it, before any video is probed."""
    captions = []
    for rel in rel_paths:
        path = osp.join(video_dir, osp.splitext(rel)[0] + '.txt')
        try:
            text = read_user_text(path, '--caption-files')
        except FileNotFoundError:
            captions.append(None)
            continue
        text = ' '.join(line.strip() for line in text.splitlines() if line.strip())
        captions.append(text or None)
    return captions


def load_captions(path):
    """The caption mapping of ``--captions``, keys with forward slashes; a null value,
    an empty caption and one of only whitespace are kept as None (no caption).

    Before, every value went through ``str()``: null became the caption 'None' (and the
    video was not counted as uncaptioned), a number its digits, silently. An empty
    caption was counted as one and written as an empty cell, which the manifest's
    readers take for none (extract_features.py --text-encoder stopped at its row).
    """
    if not osp.isfile(path):
        raise UserError(f'captions file not found: {path}')
    if path.lower().endswith(('.csv', '.jsonl')):  # before: 'not valid JSON' alone
        raise UserError(f'--captions {path} is a manifest, not a JSON object of captions: '
                        'a CSV or JSONL of path and caption (Open-Sora\'s path,text) is a '
                        f'manifest as it is: give it to extract_features.py --manifest {path}')
    try:
        with open(path, encoding='utf-8') as f:
            captions = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'captions file {path} is not valid JSON: {e}') from None
    if not isinstance(captions, dict):
        raise UserError(f'captions file {path} must hold a JSON object '
                        '{"relative/path.mp4": "caption", ...}')
    for key, value in captions.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f'captions file {path}: the caption of {key!r} is a JSON '
                            f'{_json_type(value)}, not a string (null for no caption)')
    return {k.replace('\\', '/'): v if v is None or v.strip() else None
            for k, v in captions.items()}


def _json_type(value):
    """JSON's name for the type of a decoded value."""
    names = {bool: 'boolean', int: 'number', float: 'number', list: 'array',
             dict: 'object'}
    return names.get(type(value), type(value).__name__)


def match_captions(rel_paths, captions, video_dir):
    """Each video's caption (None without one) and the keys that match no video.

    A key is a video's path relative to ``video_dir``, else a file name. Before, a
    file-name key captioned every video of that name, in any folder (``0001.mp4`` in
    each class folder), silently; now a file-name key that two videos without a path
    key of their own share is refused, as the caption cannot belong to both.
    """
    keys = [rel.replace(os.sep, '/') for rel in rel_paths]
    paths, by_name = set(keys), collections.defaultdict(list)
    for key in keys:
        if key not in captions:  # a path key decides for its video
            by_name[posixpath.basename(key)].append(key)
    name_keys = [k for k in captions if k not in paths and k in by_name]
    ambiguous = [k for k in name_keys if len(by_name[k]) > 1]
    if ambiguous:
        raise UserError(_ambiguous_message(ambiguous, by_name[ambiguous[0]], video_dir))
    per_video = [captions[k] if k in captions else _name_caption(k, captions, paths)
                 for k in keys]
    unmatched = sorted(k for k in captions if k not in paths and k not in name_keys)
    return per_video, unmatched


def _name_caption(key, captions, paths):
    """The caption keyed by the file name of the video at ``key``, or None. A name that
    is another video's path (a video at the top of VIDEO_DIR) keys that video only."""
    name = posixpath.basename(key)
    return None if name in paths else captions.get(name)


def _ambiguous_message(keys, hits, video_dir):
    many = len(keys) != 1
    return (f'--captions: {len(keys)} '
            f'{"keys are file names" if many else "key is a file name"} that several '
            f'videos share, e.g. {keys[0]!r} matches {len(hits)} videos '
            f'({", ".join(hits[:2])}{", ..." if len(hits) > 2 else ""}); key '
            f'{"them" if many else "it"} by the path relative to {video_dir}')


def _caption_source_hint(args):
    """Why no video may have found its caption."""
    if args.caption_files:
        return (' (no video has a NAME.txt beside it with text in it, e.g. clip_0001.mp4 '
                '-> clip_0001.txt)')
    return f' (every key of {args.captions} is null or empty, or matches no video)'


def refuse_dropping_captions(args):
    """Refuse to write over a manifest at ``--out`` whose rows hold captions when this
    run gives none (no --captions or --caption-files). Before, the docs' first command
    (``make_manifest.py data/clips --out data/clips/train.csv``) replaced an Open-Sora
    CSV of that name, its captions with it, by a manifest without any."""
    if args.captions or args.caption_files or not osp.isfile(args.out):
        return
    captioned = _captions_held(args.out)
    if captioned:
        raise UserError(f'--out {args.out} holds {captioned} captions, which this run '
                        '(without --captions or --caption-files) would write over with '
                        f'none: give {args.out} to extract_features.py --manifest as it is '
                        '(an Open-Sora CSV is a manifest), or write this one to another --out')


def _captions_held(path) -> int:
    """How many rows of the manifest ``path`` hold a caption ('caption', or Open-Sora's
    'text'): read as a manifest, else (a row the manifest reader refuses: a label
    that is no number, a stray comma) row by row, as far as the file can be read."""
    try:
        return sum(1 for row in load_manifest(path) if row.get('caption'))
    except ManifestError:  # (its captions are the user's all the same)
        pass
    except OSError:
        return 0
    import csv
    count = 0
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            rows = (csv.DictReader(f) if path.lower().endswith('.csv') else
                    (json.loads(line) for line in f if line.strip()))
            for row in rows:
                if isinstance(row, dict) and any(
                        isinstance(row.get(k), str) and row[k].strip()
                        for k in ('caption', 'text')):
                    count += 1
    except (OSError, ValueError, csv.Error):  # (as far as it reads)
        pass
    return count


def probe_cache_path(out):
    """Where the probes of a run are kept (mmsora/datasets/probe_cache.py): beside the
    manifest."""
    return out + '.probes.jsonl'


def skipped_list_path(out):
    """Where the full list of skipped files goes: beside the manifest."""
    return out + '.skipped.txt'


def write_skipped(out, skipped):
    """Write one line per skipped file (its path and why) to ``OUT.skipped.txt``, and
    remove a list left by an earlier run when nothing was skipped. Before, only the
    first 10 were printed ('... and 237 more') and nothing kept the rest."""
    path = skipped_list_path(out)
    if not skipped:
        if osp.isfile(path):
            os.remove(path)
        return None
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(reason.replace('\n', ' ') + '\n' for reason in skipped)
    return path


def main(argv=None):
    args = parse_args(argv)
    if not args.out.lower().endswith(('.csv', '.jsonl')):
        raise UserError(f'--out must end in .csv or .jsonl, got {args.out}')
    if args.captions and args.caption_files:
        raise UserError('--captions and --caption-files both give the captions: '
                        'choose one')
    if args.skip_uncaptioned and not (args.captions or args.caption_files):
        raise UserError('--skip-uncaptioned needs the captions: give --captions FILE or '
                        '--caption-files')
    refuse_dropping_captions(args)
    rel_paths, skipped_links = scan_videos(args.video_dir, args.extensions)
    captions, unmatched = None, []
    if args.captions:  # matched before probing: a refused key costs no probe time
        captions, unmatched = match_captions(rel_paths, load_captions(args.captions),
                                             args.video_dir)
    elif args.caption_files:
        captions = read_caption_files(args.video_dir, rel_paths)
    classes = None
    if args.label_from_folder:
        loose = [p for p in rel_paths if osp.dirname(p) == '']
        if loose:
            raise UserError(f'--label-from-folder: {len(loose)} videos lie directly in '
                            f'{args.video_dir}, outside any class folder (e.g. {loose[0]})')
        classes = sorted({p.split(os.sep)[0] for p in rel_paths}, key=natural_sort_key)
    left_out = []  # --skip-uncaptioned: not probed (the classes above count them)
    if args.skip_uncaptioned:
        left_out = [osp.join(args.video_dir, p) for p, c in zip(rel_paths, captions)
                    if c is None]
        if len(left_out) == len(rel_paths):
            raise UserError(f'--skip-uncaptioned: none of the {len(rel_paths)} videos '
                            f'under {args.video_dir} has a caption'
                            + _caption_source_hint(args))
        rel_paths, captions = map(list, zip(*[(p, c) for p, c in zip(rel_paths, captions)
                                              if c is not None]))
    full_paths = [osp.join(args.video_dir, p) for p in rel_paths]
    probed = probe_all(full_paths, args.workers, probe_cache_path(args.out), args.reprobe,
                       prog=PROG, keep=left_out)  # (captioned later: not probed again)

    rows, skipped, uncaptioned = [], [], 0
    for i, (rel, full, (info, error, _)) in enumerate(zip(rel_paths, full_paths, probed)):
        if info is None:
            skipped.append(str(error))
            continue
        row = dict(path=osp.abspath(full))
        if captions is not None:
            uncaptioned += captions[i] is None
            row['caption'] = captions[i]
        if classes is not None:
            name = rel.split(os.sep)[0]
            row['label'], row['class_name'] = classes.index(name), name
        row.update(num_frames=info['num_frames'], fps=round(info['fps'], 6),
                   height=info['height'], width=info['width'])
        rows.append(row)
    skipped_file = write_skipped(args.out, skipped + [
        f'{path}: no caption (left out by --skip-uncaptioned)' for path in left_out])
    if not rows:
        raise UserError(f'none of the {len(rel_paths)} videos under {args.video_dir} '
                        f'{"with a caption " if left_out else ""}could be read; first '
                        f'problem: {skipped[0]} (all listed in {skipped_file})')
    write_manifest(rows, args.out,
                   relative_to=None if args.absolute else osp.dirname(osp.abspath(args.out)))

    summary = (f'{PROG}: wrote {plural(len(rows), "video")} to {args.out}; '
               f'skipped {len(skipped)} unreadable')
    if skipped:
        summary += f' (all listed in {skipped_file})'
    if skipped_links:
        summary += (f'; skipped {plural(skipped_links, "folder link")} that '
                    + ('lead to folders' if skipped_links != 1 else 'leads to a folder')
                    + ' already listed')
    if classes is not None:
        summary += f'; {len(classes)} classes'
    if left_out:
        summary += (f'; left out {len(left_out)} without a caption (--skip-uncaptioned; '
                    f'listed in {skipped_file})')
    elif captions is not None:
        summary += f'; {uncaptioned} without a caption'
        if uncaptioned == len(rows):
            summary += _caption_source_hint(args)
        elif uncaptioned:  # (which, and the way to leave them out, were not said)
            none = [osp.relpath(r['path'], osp.abspath(args.video_dir)) for r in rows
                    if r.get('caption') is None]
            summary += (f' ({", ".join(none[:3])}{", ..." if len(none) > 3 else ""}; '
                        '--skip-uncaptioned leaves them out)')
    if unmatched:  # a key spelt another way than the file, or a video left out
        summary += (f'; {plural(len(unmatched), "caption")} '
                    f'matching no video: {", ".join(unmatched[:5])}'
                    + (' ...' if len(unmatched) > 5 else ''))
    print(summary)
    for reason in skipped[:10]:
        print(f'  skipped: {reason}')
    if len(skipped) > 10:
        print(f'  ... and {len(skipped) - 10} more (in {skipped_file})')
    return dict(num_rows=len(rows), skipped=skipped, classes=classes,
                skipped_file=skipped_file, skipped_links=skipped_links,
                left_out=len(left_out))


if __name__ == '__main__':
    sys.exit(run_cli(main))
