"""Scan a folder of videos into a CSV/JSONL manifest for ``VideoDataset``.

Every video is probed (frame count, fps, size; its first frame decoded) so unreadable
files are found now and left out, not in a training worker. Paths are written relative
to the manifest's folder (``--absolute`` for absolute paths), which is where
``load_manifest`` resolves them by default.

Examples::

    python tools/make_manifest.py data/ucf101/videos --out data/ucf101/train.csv \\
        --label-from-folder --workers 8
    python tools/make_manifest.py data/clips --out data/clips.jsonl \\
        --captions data/captions.json          # {"sub/clip_0001.mp4": "a dog ...", ...}
"""
import json
import os
import os.path as osp
import sys
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm

from mmsora.datasets.manifest import write_manifest
from mmsora.datasets.utils import natural_sort_key
from mmsora.utils.cli import ArgumentParser, UserError, run_cli
from mmsora.utils.video_io import VideoReadError, probe_video

PROG = 'make_manifest.py'
VIDEO_EXTENSIONS = 'mp4,avi,mov,mkv,webm'


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description='Probe every video under a '
                                'folder and write a manifest (CSV or JSONL by --out).')
    p.add_argument('video_dir', metavar='VIDEO_DIR', help='folder scanned recursively')
    p.add_argument('--out', required=True, help='manifest file: .csv or .jsonl')
    p.add_argument('--captions', help='JSON file mapping a video path relative to '
                   'VIDEO_DIR (or its file name) to its caption')
    p.add_argument('--label-from-folder', action='store_true',
                   help='label = index of the top-level folder under VIDEO_DIR in the '
                   'sorted folder names (ImageFolder rule); adds a class_name column')
    p.add_argument('--extensions', default=VIDEO_EXTENSIONS,
                   help=f'comma-separated video extensions (default {VIDEO_EXTENSIONS})')
    p.add_argument('--workers', type=int, default=4, help='probing threads')
    p.add_argument('--absolute', action='store_true',
                   help='write absolute paths instead of paths relative to the manifest')
    return p.parse_args(argv)


def scan_videos(video_dir, extensions):
    """Sorted paths (relative to ``video_dir``) of the files with these extensions."""
    if not osp.isdir(video_dir):
        raise UserError(f'video folder not found: {video_dir}')
    exts = tuple('.' + e.strip().lower().lstrip('.') for e in extensions.split(',')
                 if e.strip())
    found = []
    for dirpath, _, filenames in os.walk(video_dir, followlinks=True):
        found += [osp.relpath(osp.join(dirpath, f), video_dir) for f in filenames
                  if f.lower().endswith(exts)]
    if not found:
        raise UserError(f'no videos ({", ".join(exts)}) under {video_dir}')
    return sorted(found, key=natural_sort_key)


def load_captions(path):
    """The caption mapping of ``--captions``, keys with forward slashes."""
    if not osp.isfile(path):
        raise UserError(f'captions file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            captions = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'captions file {path} is not valid JSON: {e}') from None
    if not isinstance(captions, dict):
        raise UserError(f'captions file {path} must hold a JSON object '
                        '{"relative/path.mp4": "caption", ...}')
    return {k.replace('\\', '/'): str(v) for k, v in captions.items()}


def probe(path):
    """``probe_video``, or the reason the file cannot be read."""
    try:
        return probe_video(path), None
    except (VideoReadError, OSError) as e:
        return None, str(e)


def main(argv=None):
    args = parse_args(argv)
    if not args.out.lower().endswith(('.csv', '.jsonl')):
        raise UserError(f'--out must end in .csv or .jsonl, got {args.out}')
    rel_paths = scan_videos(args.video_dir, args.extensions)
    captions = load_captions(args.captions) if args.captions else None
    classes = None
    if args.label_from_folder:
        loose = [p for p in rel_paths if osp.dirname(p) == '']
        if loose:
            raise UserError(f'--label-from-folder: {len(loose)} videos lie directly in '
                            f'{args.video_dir}, outside any class folder (e.g. {loose[0]})')
        classes = sorted({p.split(os.sep)[0] for p in rel_paths}, key=natural_sort_key)
    full_paths = [osp.join(args.video_dir, p) for p in rel_paths]

    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        probed = list(tqdm(pool.map(probe, full_paths), total=len(full_paths),
                           desc='probing videos', unit='video', file=sys.stderr))

    rows, skipped, uncaptioned = [], [], 0
    for rel, full, (info, reason) in zip(rel_paths, full_paths, probed):
        if info is None:
            skipped.append(reason)
            continue
        row = dict(path=osp.abspath(full))
        if captions is not None:
            key = rel.replace(os.sep, '/')
            caption = captions.get(key, captions.get(osp.basename(rel)))
            uncaptioned += caption is None
            row['caption'] = caption
        if classes is not None:
            name = rel.split(os.sep)[0]
            row['label'], row['class_name'] = classes.index(name), name
        row.update(num_frames=info['num_frames'], fps=round(info['fps'], 6),
                   height=info['height'], width=info['width'])
        rows.append(row)
    if not rows:
        raise UserError(f'none of the {len(rel_paths)} videos under {args.video_dir} '
                        f'could be read; first problem: {skipped[0]}')
    write_manifest(rows, args.out,
                   relative_to=None if args.absolute else osp.dirname(osp.abspath(args.out)))

    summary = (f'{PROG}: wrote {len(rows)} video{"s" * (len(rows) != 1)} to {args.out}; '
               f'skipped {len(skipped)} unreadable')
    if classes is not None:
        summary += f'; {len(classes)} classes'
    names = {n for rel in rel_paths for n in (rel.replace(os.sep, '/'), osp.basename(rel))}
    unmatched = sorted(set(captions or ()) - names)
    if captions is not None:
        summary += f'; {uncaptioned} without a caption'
        if unmatched:  # a key spelt another way than the file, or a video left out
            summary += (f'; {len(unmatched)} caption{"s" * (len(unmatched) != 1)} '
                        f'matching no video: {", ".join(unmatched[:5])}'
                        + (' ...' if len(unmatched) > 5 else ''))
    print(summary)
    for reason in skipped[:10]:
        print(f'  skipped: {reason}')
    if len(skipped) > 10:
        print(f'  ... and {len(skipped) - 10} more')
    return dict(num_rows=len(rows), skipped=skipped, classes=classes)


if __name__ == '__main__':
    sys.exit(run_cli(main))
