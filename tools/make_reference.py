"""Make a reference set for FID / FVD: ``python tools/make_reference.py (--images DIR |
--videos MANIFEST) --out ref.npz [options]``.

Writes the ADM evaluator's layout, ``arr_0``: uint8 (N, S, S, 3) pictures (ADM's /
DiT's center crop) or (N, T, S, S, 3) clips (shorter side resized, center crop). The
FID / FVD metrics turn it into feature statistics on first use and cache them beside
it (``ref_InceptionV3FID_stats.npz``), so the reference is read once per extractor.

Examples:
    python tools/make_reference.py --images data/my_images --out data/my_ref.npz \
        --image-size 256
    # UCF-101 FVD-2048 (configs/_base_/evaluation/fvd2048_ucf101.py): 2048 videos, a
    # seeded random subset, one 16-frame clip of every 3rd frame each, at a seeded
    # random start
    python tools/make_reference.py --videos data/ucf101/train.csv --num-frames 16 \
        --frame-stride 3 --image-size 256 --max-samples 2048 \
        --out data/ucf101_16x256_fvd_reference.npz
"""
import os
import os.path as osp
import sys
import tempfile

import numpy as np
from tqdm import tqdm

from mmsora.utils.cli import (ArgumentParser, UserError, check_at_least, first_line, note, plural,
                              run_cli)


def parse_args(argv=None):
    parser = ArgumentParser(description='Make an FID / FVD reference .npz')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--images', help='folder of pictures (searched recursively)')
    source.add_argument('--videos', help='video manifest (CSV / JSONL, tools/make_manifest.py)')
    parser.add_argument('--out', required=True, help='the .npz to write')
    parser.add_argument('--image-size', type=int, default=256,
                        help='square side S (default: 256, as the models sample)')
    parser.add_argument('--num-frames', type=int,
                        help='--videos: frames per clip (default: 16, FVD-16)')
    parser.add_argument('--frame-stride', type=int,
                        help='--videos: take every k-th frame (default: 1)')
    parser.add_argument('--max-samples', type=int, help='at most this many pictures / clips '
                        '(a seeded random subset of the inputs, drawn before reading; an '
                        'unreadable one is skipped, not replaced); FVD-2048: 2048')
    parser.add_argument('--seed', type=int, default=0, help='seed of the subset and of '
                        'the clip start positions')
    return parser.parse_args(argv)


def list_images(root):
    from mmsora.datasets.image_folder import IMG_EXTENSIONS
    if osp.isfile(root):  # (it said 'folder not found' of a file that is there)
        raise UserError(f'--images takes a folder of pictures (searched recursively), got '
                        f'the file {root}: give its folder, or put the pictures in one')
    if not osp.isdir(root):
        raise UserError(f'--images folder not found: {root}')
    files = sorted(osp.join(d, f) for d, _, fs in os.walk(root, followlinks=True)
                   for f in fs if f.lower().endswith(IMG_EXTENSIONS))
    if not files:
        raise UserError(f'no pictures ({", ".join(IMG_EXTENSIONS)}) under {root}')
    return files


def read_picture(path, size):
    """``(picture, (W, H))``: the center crop, and the size it was read at."""
    from mmsora.datasets.image_folder import center_crop_arr, load_image
    image = load_image(path)
    return np.asarray(center_crop_arr(image, size)), image.size


def read_clip(row, args, rng):
    """A clip of ``num_frames`` frames at a seeded random start, resized and cropped."""
    from PIL import Image

    from mmsora.utils.video_io import probe_video, read_video_frames
    span = (args.num_frames - 1) * args.frame_stride + 1
    total = row.get('num_frames') or probe_video(row['path'])['num_frames']
    if total < span:
        raise ValueError(f'{row["path"]} has {plural(total, "frame")}, fewer than '
                         f'the {span} a clip needs')
    start = int(rng.integers(0, total - span + 1))
    frames = read_video_frames(row['path'], range(start, start + span, args.frame_stride))
    h, w = frames.shape[1:3]
    scale = args.image_size / min(h, w)
    size = (max(args.image_size, round(w * scale)), max(args.image_size, round(h * scale)))
    top, left = (size[1] - args.image_size) // 2, (size[0] - args.image_size) // 2
    out = [np.asarray(Image.fromarray(f).resize(size, Image.BICUBIC))
           [top:top + args.image_size, left:left + args.image_size] for f in frames]
    return np.stack(out)                                      # (T, S, S, 3)


def main(argv=None):
    args = parse_args(argv)
    if args.images and (args.num_frames, args.frame_stride) != (None, None):
        raise UserError('--num-frames and --frame-stride are for --videos clips; '
                        '--images makes a picture reference')  # (they were ignored)
    args.num_frames = 16 if args.num_frames is None else args.num_frames
    args.frame_stride = 1 if args.frame_stride is None else args.frame_stride
    check_at_least(args, ('image_size', 'num_frames', 'frame_stride', 'max_samples'))
    if not args.out.endswith('.npz'):
        raise UserError(f'--out must be an .npz file, got {args.out!r}')
    from mmsora.apis.mass_sampling import zip_npy_files
    rng = np.random.default_rng(args.seed)
    if args.images:
        items = list_images(args.images)
        shape = (args.image_size, args.image_size, 3)
    else:
        from mmsora.datasets.manifest import load_manifest
        items = load_manifest(args.videos)
        shape = (args.num_frames, args.image_size, args.image_size, 3)
    if args.max_samples and args.max_samples < len(items):
        keep = np.sort(rng.choice(len(items), args.max_samples, replace=False))
        items = [items[i] for i in keep]
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    skipped = []  # (name, why)
    enlarged = []  # (name, W, H) of pictures smaller than the reference size
    with tempfile.TemporaryDirectory(dir=osp.dirname(osp.abspath(args.out))) as tmp:
        npy = osp.join(tmp, 'arr_0.npy')
        arr = np.lib.format.open_memmap(npy, mode='w+', dtype=np.uint8,
                                        shape=(len(items), *shape))
        n = 0
        for item in tqdm(items, desc='reference'):
            try:
                if args.images:
                    arr[n], (w, h) = read_picture(item, args.image_size)
                    if min(w, h) < args.image_size:
                        enlarged.append((item, w, h))
                else:
                    arr[n] = read_clip(item, args, rng)
                n += 1
            except (OSError, ValueError) as e:  # unreadable file: name it, go on
                skipped.append((item if args.images else item['path'], first_line(e)))
                tqdm.write(f'skipped {skipped[-1][0]}: {skipped[-1][1]}')
        if n == 0:
            raise UserError(f'no readable picture or clip among {len(items)}: nothing '
                            f'written ({_listed(skipped)})')
        arr.flush()
        del arr
        if n < len(items):  # drop the unused tail rows of the memory map
            full = np.load(npy, mmap_mode='r')
            part = np.lib.format.open_memmap(osp.join(tmp, 'part.npy'), mode='w+',
                                             dtype=np.uint8, shape=(n, *shape))
            part[:] = full[:n]
            part.flush()
            del part, full
            npy = osp.join(tmp, 'part.npy')
        zip_npy_files(args.out, {'arr_0.npy': npy})
    what = 'picture' if args.images else 'clip'
    print(f'wrote {plural(n, what)} {shape} to {args.out}'
          + (f'; skipped {len(skipped)} unreadable or too short: {_listed(skipped)}'
             if skipped else ''))
    if enlarged:  # (upsampled without a word: blurrier than the real set, a worse FID)
        shown = '; '.join(f'{name} ({w}x{h})' for name, w, h in enlarged[:5]) + (
            ' ...' if len(enlarged) > 5 else '')
        note(f'{len(enlarged)} of {plural(n, "picture")} are smaller than --image-size '
             f'{args.image_size} on their shorter side and were enlarged to it: {shown}')
    if n < 2:  # FID / FVD refuse it (a covariance needs 2 samples): said now, not then
        print(f'warning: {args.out} holds {plural(n, what)}: FID and FVD need at least 2 '
              f'reference samples; add {"pictures" if args.images else "videos"}'
              + ('' if args.images else ' or ask for shorter clips (--num-frames, '
                 '--frame-stride)'), file=sys.stderr)


def _listed(skipped, most=5):
    """``name (why); ...`` of the first ``most`` skipped inputs."""
    return '; '.join(f'{name} ({why})' for name, why in skipped[:most]) + (
        ' ...' if len(skipped) > most else '')


if __name__ == '__main__':
    sys.exit(run_cli(main))
