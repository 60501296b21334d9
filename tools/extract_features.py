"""Encode pictures or video clips with a VAE (and captions with a text encoder) once,
into a packed latent store.

Pictures: an ImageFolder tree (``--data-path``) with DiT's preprocessing
(``center_crop_arr``, [-1, 1]). Videos: the rows of a manifest (``--manifest``, written
by tools/make_manifest.py), one clip per row from the middle of the video
(``--num-frames``, ``--frame-stride`` or ``--target-fps``), resized and center-cropped to
``--size``. The VAE is an SD-style ``AutoencoderKL`` applied frame by frame (``--vae``)
or a diffusers video VAE that also compresses time (``--video-vae`` with
``--video-vae-class``, e.g. AutoencoderKLWan). With ``--text-encoder`` (T5 or CLIP from
a local folder) each item's caption is encoded too (an ImageFolder picture's caption is
its class name) and the tokens, mask and pooled embedding are stored beside its latent.

With ``--store moments`` the scaled posterior mean and std are kept and training draws
a fresh sample each time; with ``--flip`` a mirrored copy of every item is encoded too,
so neither the posterior noise nor the flip is frozen at extraction time (fast-DiT
freezes both).

Examples::

    python tools/extract_features.py --data-path data/imagenet/train \\
        --out data/imagenet256_latents --vae checkpoints/sd-vae-ft-ema --flip
    python tools/extract_features.py --manifest data/ucf101/train.csv --num-frames 16 \\
        --frame-stride 3 --size 256 --out data/ucf101_16x256_latents \\
        --vae checkpoints/sd-vae-ft-ema --text-encoder checkpoints/t5-v1_1-xxl
    torchrun --nproc_per_node 8 tools/extract_features.py ...   # several GPUs

Rerunning the same command after a crash continues with the unfinished shards.
"""
import json
import os
import os.path as osp
import sys
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mmsora.datasets import LatentStoreWriter, ManifestError
from mmsora.datasets.extraction_sources import ClipSource, ImageSource, collate_sources
from mmsora.models.text_encoders import HFTextEncoder
from mmsora.models.text_encoders.hf_text_encoder import KINDS as TEXT_KINDS
from mmsora.models.vaes import VIDEO_VAE_CLASSES, AutoencoderKLWrapper, VideoVAEWrapper
from mmsora.utils.cli import ArgumentParser, UserError, device_setting, run_cli
from mmsora.utils.dist import barrier_device_ids, close_process_group

PROG = 'extract_features.py'


def parse_args(argv=None):
    p = ArgumentParser(description='Encode pictures or video clips (and their '
                                'captions) into a packed latent store (resumable, torchrun '
                                'for several GPUs).')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--data-path', help='ImageFolder root: DIR/class/*.jpg')
    src.add_argument('--manifest', help='video manifest (.csv / .jsonl) from '
                     'tools/make_manifest.py')
    p.add_argument('--data-root', help='where the manifest\'s relative video paths '
                   'resolve (default: the manifest\'s folder)')
    p.add_argument('--out', required=True, help='output store folder')
    vae = p.add_mutually_exclusive_group(required=True)
    vae.add_argument('--vae', help='local diffusers AutoencoderKL folder (or a pipeline '
                     'with vae/), applied frame by frame to videos')
    vae.add_argument('--video-vae', help='local diffusers video VAE folder (compresses '
                     'time as well; see --video-vae-class)')
    p.add_argument('--video-vae-class', choices=VIDEO_VAE_CLASSES,
                   help="the --video-vae folder's diffusers class (default: the one its "
                   "config.json names)")
    p.add_argument('--image-size', type=int, default=256,
                   help='pictures: side of the square crop')
    p.add_argument('--num-frames', type=int, default=16, help='videos: frames per clip')
    step = p.add_mutually_exclusive_group()
    step.add_argument('--frame-stride', type=int, help='videos: take every N-th frame '
                      '(default 1)')
    step.add_argument('--target-fps', type=float, help='videos: clip frame rate (the '
                      'stride follows each video\'s fps)')
    p.add_argument('--size', type=int, nargs='+', metavar='H [W]',
                   help='videos: output height and width (one number: square; default '
                   '--image-size); must be multiples of the VAE factor')
    p.add_argument('--pad', choices=['loop', 'repeat_last'],
                   help='videos shorter than a clip: pad them (default: skip them)')
    p.add_argument('--text-encoder', help='local T5 / CLIP folder (or a pipeline with '
                   'text_encoder/ and tokenizer/): also store caption embeddings')
    p.add_argument('--text-encoder-kind', default='t5', choices=sorted(TEXT_KINDS))
    p.add_argument('--max-length', type=int, help='caption tokens (default: 120 for '
                   'T5, 77 for CLIP)')
    p.add_argument('--hidden-layer', type=int, help='text encoder hidden state to keep '
                   '(default: the last, after the final norm)')
    p.add_argument('--store', choices=['moments', 'samples'], default='moments',
                   help='keep the scaled posterior mean+std, or one scaled sample')
    p.add_argument('--flip', action='store_true',
                   help='also encode a horizontally flipped copy of every item')
    p.add_argument('--dtype', choices=['float16', 'bfloat16', 'float32'], default='float16')
    p.add_argument('--shard-size', type=int, default=4096, help='items per shard')
    p.add_argument('--batch-size', type=int, default=32, help='items per batch')
    p.add_argument('--micro-batch-size', type=int, help='most frames (frame-by-frame VAE) '
                   'or clips (video VAE) per VAE call, to bound memory (default: '
                   '--batch-size)')
    p.add_argument('--num-workers', type=int, default=None,
                   help='decoding workers (default: 4, or as many as the CPUs this '
                   'process may use when fewer: more only compete for them)')
    p.add_argument('--device', type=device_setting,
                   default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--scale-factor', type=float,
                   help='latent scale (default: 0.18215 for --vae, the VAE config\'s for '
                   '--video-vae)')
    p.add_argument('--seed', type=int, default=0, help='seed of --store samples noise')
    return p.parse_args(argv)


def fail(msg):
    """Stop with a one-line error (exit 2: run_cli)."""
    raise UserError(str(msg))


# The store's settings and the options that set them: a rerun into the same --out
# with another setting is refused naming the setting (num_copies=2): the option too.
OPTION_OF = dict(
    num_copies='--flip', content='--store', dtype='--dtype', shard_size='--shard-size',
    vae='--vae / --video-vae', scale_factor='--scale-factor', shift_factor='the VAE',
    latent_shape='--size and the VAE', source='--data-path / --manifest',
    num_source_items='the inputs (--data-path / --manifest)', image_size='--image-size',
    num_frames='--num-frames', size='--size', frame_stride='--frame-stride',
    target_fps='--target-fps', text_encoder='--text-encoder',
    text_encoder_kind='--text-encoder-kind', text_shape='--text-encoder / --max-length',
    pooled_dim='--text-encoder-kind', classes='the class folders of --data-path')


def with_option(error) -> str:
    """The store's refusal of other settings, with the option that sets the one named."""
    import re
    text = str(error)
    found = re.search(r' written with (\w+)=', text)
    option = OPTION_OF.get(found.group(1)) if found else None
    return f'{text} (set by {option})' if option else text


def check_args(args):
    for name in ('image_size', 'num_frames', 'shard_size', 'batch_size', 'micro_batch_size',
                 'frame_stride', 'max_length'):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if args.num_workers is None:
        args.num_workers = min(4, len(os.sched_getaffinity(0)) if hasattr(
            os, 'sched_getaffinity') else os.cpu_count() or 1)
    if args.num_workers < 0:
        fail(f'--num-workers must be >= 0, got {args.num_workers}')
    if args.size is not None and len(args.size) > 2:
        fail(f'--size takes H or H W, got {len(args.size)} numbers')
    if args.data_path and (args.size or args.frame_stride or args.target_fps or args.pad):
        fail('--size, --frame-stride, --target-fps and --pad are for videos (--manifest)')
    # before the inputs are scanned: no VAE of this tool encodes to Stage C latents
    refuse_stable_cascade(args.vae, '--vae')
    refuse_stable_cascade(args.video_vae, '--video-vae')


# --------------------------------------------------------------------------- #
#                                 Distributed                                  #
# --------------------------------------------------------------------------- #
def init_dist(device):
    """Join the torchrun process group when WORLD_SIZE > 1; returns (rank, world, device)."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world <= 1:
        return 0, 1, torch.device(device)
    on_cuda = device.startswith('cuda')
    if on_cuda:
        device = f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend='nccl' if on_cuda else 'gloo')
    return dist.get_rank(), dist.get_world_size(), torch.device(device)


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier(**barrier_device_ids())


# --------------------------------------------------------------------------- #
#                                   Building                                   #
# --------------------------------------------------------------------------- #
def build_source(args):
    try:
        if args.data_path:
            return ImageSource(args.data_path, args.image_size)
        size = args.size or [args.image_size]
        return ClipSource(args.manifest, args.num_frames, (size[0], size[-1]),
                          frame_stride=args.frame_stride, target_fps=args.target_fps,
                          pad=args.pad, data_root=args.data_root,
                          require_caption=bool(args.text_encoder))
    except (FileNotFoundError, ValueError, ManifestError) as e:
        fail(e)


def video_vae_class(folder: str) -> str:
    """The class a video VAE folder names in its config.json (or its vae/ subfolder's),
    for a ``--video-vae`` without ``--video-vae-class``."""
    from mmsora.models.vaes.autoencoder_kl import folder_vae_class
    root = folder if osp.isfile(osp.join(folder, 'config.json')) else osp.join(folder, 'vae')
    found = folder_vae_class(root)  # (the folder AutoencoderKLWrapper._load reads)
    if found in VIDEO_VAE_CLASSES:
        return found
    if found == 'AutoencoderKL':
        raise ValueError(f'--video-vae {folder}: an image VAE (AutoencoderKL, its '
                         'config.json says): give it with --vae')
    raise ValueError(f'--video-vae {folder}: its config.json names no video VAE class '
                     f'({found or "none"}): give --video-vae-class, one of '
                     f'{", ".join(VIDEO_VAE_CLASSES)}')


# What a Stable Cascade download holds (stabilityai/stable-cascade and -prior).
STABLE_CASCADE_PARTS = ('decoder', 'decoder_lite', 'vqgan', 'prior', 'prior_lite')


def is_stable_cascade_folder(folder: str) -> bool:
    """Whether ``folder`` is a Stable Cascade download, not a VAE: it has no VAE
    config.json, and its model_index.json names a StableCascade pipeline or it has
    Stage B / Stage A / Stage C subfolders."""
    if any(osp.isfile(osp.join(folder, *sub, 'config.json')) for sub in ((), ('vae',))):
        return False
    index = osp.join(folder, 'model_index.json')
    if osp.isfile(index):
        try:
            with open(index) as f:
                if str(json.load(f).get('_class_name', '')).startswith('StableCascade'):
                    return True
        except (OSError, ValueError, AttributeError):
            pass
    return any(osp.isdir(osp.join(folder, part)) for part in STABLE_CASCADE_PARTS)


def refuse_stable_cascade(folder: Optional[str], option: str) -> None:
    """Refuse a Stable Cascade folder as the VAE in one line saying what to do.

    Before, ``--vae`` with one stopped with "VAE folder ... has no config.json (not a
    diffusers AutoencoderKL folder)", not saying that this tool cannot write Stage C
    latents at all (diffusers ships no Stage C encoder; docs/stable_cascade.md)."""
    if folder and is_stable_cascade_folder(folder):
        fail(f'{option} {folder} is a Stable Cascade folder: its Stage B + A only decode, '
             'and diffusers ships no Stage C (EfficientNetV2-S) encoder, so this tool '
             'cannot write Stage C latents; encode with your own encoder '
             '(StableCascadeDecoder(encoder=...)) and write the store with '
             'mmsora.datasets.LatentStoreWriter (docs/stable_cascade.md, "Latent '
             'extraction: a gap")')


def build_vae(args):
    micro = args.micro_batch_size or args.batch_size
    try:
        if args.vae:
            vae = AutoencoderKLWrapper(
                pretrained_path=args.vae, micro_batch_size=micro,
                scale_factor=0.18215 if args.scale_factor is None else args.scale_factor)
        else:
            vae = VideoVAEWrapper(args.video_vae_class or video_vae_class(args.video_vae),
                                  pretrained_path=args.video_vae,
                                  scale_factor=args.scale_factor, micro_batch_size=micro)
        vae.vae  # load now: a bad folder should fail before any work starts
    except (FileNotFoundError, OSError, ValueError) as e:
        fail(e)
    return vae


def build_text_encoder(args):
    if not args.text_encoder:
        return None
    try:
        enc = HFTextEncoder(args.text_encoder, kind=args.text_encoder_kind,
                            max_length=args.max_length, hidden_layer=args.hidden_layer,
                            micro_batch_size=args.batch_size)
        enc.encoder  # load now
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:
        fail(e)
    return enc


def latent_shape_of(vae, source):
    """Shape of one latent: (C, h, w) for pictures, (C, T', h, w) for clips."""
    frames, h, w = source.frames_shape()
    f = vae.downsample_factor
    if h % f or w % f:
        fail(f'size {h}x{w} is not a multiple of the VAE factor {f}')
    if isinstance(vae, VideoVAEWrapper):
        try:
            vae.check_num_frames(frames or 1)
        except ValueError as e:
            fail(f'--num-frames: {e}')
        shape = vae.latent_shape(frames or 1, h, w)
        return shape if frames else (shape[0], *shape[2:])
    return (vae.latent_channels, *((frames,) if frames else ()), h // f, w // f)


# --------------------------------------------------------------------------- #
#                                    Main                                      #
# --------------------------------------------------------------------------- #
class ShardBuffer:
    """Collects one shard's moments (and text) until all of its source items are through."""

    def __init__(self, shard_id, start, stop):
        self.shard_id, self.start, self.stop = shard_id, start, stop
        self.moments, self.labels, self.skipped, self.text, self.seen = [], [], [], [], 0
        self.why = []  # beside skipped: each one's reason

    @property
    def full(self):
        return self.seen == self.stop - self.start


def flush(writer, buf, args, item_shape):
    """Write a finished shard (sampling from the moments for ``--store samples``)."""
    moments = torch.stack(buf.moments) if buf.moments else torch.zeros(0, *item_shape)
    if args.store == 'samples':
        # Noise seeded per shard: a resumed run draws what an uninterrupted one would.
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + buf.shard_id)
        eps = torch.randn(moments[:, :, 0].shape, generator=gen)
        latents = (moments[:, :, 0] + moments[:, :, 1] * eps).unsqueeze(2)
    else:
        latents = moments
    text = None
    if writer.header['text_shape']:
        L, D = writer.header['text_shape']
        empty = dict(text_embeds=torch.zeros(0, L, D), text_mask=torch.zeros(0, L, dtype=bool),
                     pooled_text_embeds=torch.zeros(0, writer.header['pooled_dim'] or 0))
        text = {k: torch.stack([t[k] for t in buf.text]) if buf.text else empty[k]
                for k in (buf.text[0] if buf.text else empty)}
        if not writer.header['pooled_dim']:
            text.pop('pooled_text_embeds', None)
    writer.write_shard(buf.shard_id, latents, buf.labels, buf.skipped, text=text,
                       why=buf.why)


def encode_text(text_encoder, captions, device):
    """Per-item dicts of text fields, on the CPU."""
    emb, mask, pooled = text_encoder.encode(captions, device=device)
    items = []
    for i in range(len(captions)):
        item = dict(text_embeds=emb[i].cpu(), text_mask=mask[i].cpu())
        if pooled is not None:
            item['pooled_text_embeds'] = pooled[i].cpu()
        items.append(item)
    return items


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    source = build_source(args)
    vae = build_vae(args)
    text_encoder = build_text_encoder(args)
    rank, world, device = init_dist(args.device)
    vae.vae.to(device)
    latent_shape = latent_shape_of(vae, source)
    copies = 2 if args.flip else 1
    text_shape = pooled_dim = None
    if text_encoder is not None:
        text_shape = (text_encoder.max_length, text_encoder.embed_dim)
        pooled_dim = text_encoder.pooled_dim
    meta = dict(source=osp.abspath(args.data_path or args.manifest))
    if args.data_path:
        meta.update(classes=source.classes, image_size=args.image_size)
    else:
        meta.update(num_frames=args.num_frames, size=list(source.size),
                    frame_stride=args.frame_stride, target_fps=args.target_fps)
    if text_encoder is not None:
        meta.update(text_encoder=args.text_encoder, text_encoder_kind=args.text_encoder_kind)
    try:
        writer = LatentStoreWriter(
            args.out, len(source), latent_shape, dtype=args.dtype, content=args.store,
            num_copies=copies, scale_factor=vae.scale_factor, shift_factor=vae.shift_factor,
            vae=args.vae or args.video_vae, shard_size=args.shard_size, rank=rank,
            world_size=world, meta=meta, text_shape=text_shape, pooled_dim=pooled_dim)
    except (ValueError, OSError) as e:  # OSError: --out runs into a file
        fail(with_option(e))

    pending = writer.pending_shards()
    indices = [i for k in pending for i in range(*writer.shard_range(k))]
    loader = DataLoader(Subset(source, indices), batch_size=args.batch_size,
                        num_workers=args.num_workers, collate_fn=collate_sources,
                        pin_memory=device.type == 'cuda')
    bufs = {k: ShardBuffer(k, *writer.shard_range(k)) for k in pending}
    skipped_now = []
    unit = 'img' if args.data_path else 'clip'
    with tqdm(total=len(indices), desc=f'encode (rank {rank})', disable=rank != 0,
              unit=unit, dynamic_ncols=True) as pbar:
        for batch, items in loader:
            if batch is not None:
                x = batch.to(device, non_blocking=True)
                if args.flip:
                    x = torch.cat([x, x.flip(-1)])  # originals then mirrored copies
                mean, std = vae.encode_moments(x)
                moments = torch.stack([mean, std], 1).cpu()  # (n*copies, 2, C, ...)
                moments = iter(moments.unflatten(0, (copies, -1)).transpose(0, 1))
                if text_encoder is not None:
                    texts = iter(encode_text(
                        text_encoder, [source.captions[g] for g, why in items if why is None],
                        device))
            for gidx, why in items:
                buf = bufs[gidx // args.shard_size]
                if why is None:
                    buf.moments.append(next(moments))
                    buf.labels.append(source.labels[gidx])
                    if text_encoder is not None:
                        buf.text.append(next(texts))
                else:
                    buf.skipped.append(source.names[gidx])
                    buf.why.append(why)
                    skipped_now.append(source.names[gidx])
                buf.seen += 1
                if buf.full:
                    flush(writer, bufs.pop(buf.shard_id), args, (copies, 2, *latent_shape))
            pbar.update(len(items))

    barrier()
    summary = None
    if rank == 0:
        index = writer.finalize()
        # shards_written / skipped_this_run count rank 0's work only.
        summary = dict(num_items=index['num_items'], num_shards=len(index['shards']),
                       complete=index['complete'], num_skipped=index['num_skipped'],
                       shards_written=len(pending), skipped_this_run=skipped_now,
                       latent_shape=list(latent_shape))
        skipped = [s for sh in index['shards'] for s in sh['skipped']]
        # the reasons this run's and earlier runs' shards recorded (older stores: none)
        reasons = {name: why for sh in index['shards']
                   for name, why in zip(sh['skipped'], sh.get('skipped_why', ()))}
        flips = (f' (x2 with the flipped copies: {2 * index["num_items"]} latents)'
                 if index['num_copies'] == 2 else '')
        print(f'{PROG}: {index["num_items"]} items{flips}, latents of shape '
              f'{tuple(latent_shape)}, in '
              f'{len(index["shards"])}/{index["num_shards"]} shards at {args.out} '
              f'({len(pending)} shard{"s" * (len(pending) != 1)} written by rank 0 in this '
              f'run); skipped {len(skipped)} unreadable or too short '
              f'input{"s" * (len(skipped) != 1)}'
              + (': ' + '; '.join(f'{name} ({reasons[name]})' if name in reasons else name
                                  for name in skipped[:10])
                 + (' ...' if len(skipped) > 10 else '') if skipped else ''))
    close_process_group()
    if summary and summary['complete'] and not summary['num_items']:
        fail(f'no latents written to {args.out}: '
             + (f'all {len(skipped)} inputs were unreadable' if skipped else 'no inputs'))
    return summary


if __name__ == '__main__':
    sys.exit(run_cli(main))
