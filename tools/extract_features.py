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

Rerunning the same command after a crash continues with the unfinished shards; what
is in --out is read before any model loads (a complete store: nothing to do), and a
rerun with other settings or other source items (a manifest changed since) is refused;
a manifest grown by rows is refused naming the new rows and how to add them (another
store, trained on with this one). An --out folder of other files and no store is
refused (an empty one is taken). One run writes an --out at a time: a second one is
refused naming the process that holds its lock (``OUT/.extract.lock``; a torchrun's ranks
are one run); a lock left by a run that stopped (its process gone) is taken over.
A rerun checks every finished shard's files once against the sizes their .npy headers and
the index give (a stat and a header read each, no data): a shard cut short or missing
(a copy or sync that stopped, a full disk) is encoded again, in a complete store too.
"""
import copy
import json
import os
import os.path as osp
import re
import sys
from typing import Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mmsora.datasets import LatentStoreWriter, ManifestError
from mmsora.datasets.extraction_sources import ClipSource, ImageSource, collate_sources
from mmsora.datasets.image_folder import IMG_EXTENSIONS
from mmsora.datasets.manifest import VIDEO_EXTENSIONS
from mmsora.datasets.shard_files import say_damaged
from mmsora.datasets.store_folder import foreign_folder_message
from mmsora.datasets.store_format import (TORCH_DTYPES, UNRECORDED_TEXT_ENCODER_DTYPE,
                                         nonfinite_items)
from mmsora.datasets.store_lock import StoreLock
from mmsora.datasets.store_records import (SourceChangedError, SourceCountError,
                                           read_store_progress)
from mmsora.models.text_encoders import HFTextEncoder
from mmsora.models.text_encoders.hf_text_encoder import KINDS as TEXT_KINDS
from mmsora.models.vaes import VIDEO_VAE_CLASSES, AutoencoderKLWrapper, VideoVAEWrapper
from mmsora.utils.cli import (ArgumentParser, UserError, check_at_least,
                              check_output_path, device_setting, note, plural,
                              run_cli)
from mmsora.utils.dist import (barrier_device_ids, check_gpu_of_local_rank,
                               check_gpu_per_process, close_process_group)
from mmsora.utils.video_io import READER_VERSION

PROG = 'extract_features.py'
# Items per shard by default. A shard is held in memory until it is written, and a
# caption's tokens are max_length x width values (2 bytes each in float16 / bfloat16):
# 120 x 4096 x 2 = 0.94 MiB for T5-XXL, so text stores take smaller shards.
SHARD_SIZE, TEXT_SHARD_SIZE = 4096, 1024


def parse_args(argv=None):
    p = ArgumentParser(description='Encode pictures or video clips (and their '
                                'captions) into a packed latent store (resumable, torchrun '
                                'for several GPUs).')
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument('--data-path', help='ImageFolder root: DIR/class/*.jpg')
    src.add_argument('--manifest', help='video manifest (.csv / .jsonl) from '
                     "tools/make_manifest.py, or Open-Sora's CSV (path,text,...) as it is")
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
                   '--image-size); multiples of the VAE factor, and the latent sides '
                   '(size / factor) multiples of the denoiser\'s patch size: for DiT /2 '
                   'on an SD VAE (factor 8), multiples of 16')
    p.add_argument('--pad', choices=['loop', 'repeat_last'],
                   help='videos shorter than a clip: pad them (default: skip them)')
    p.add_argument('--clips-per-video', type=int, default=1, metavar='K',
                   help='videos: K clips from each, spread evenly over it (the first '
                   'window, the last and between), each an item of the store, so training '
                   'draws among K windows of every video (default 1: the middle one)')
    p.add_argument('--text-encoder', help='local T5 / CLIP folder (or a pipeline with '
                   'text_encoder/ and tokenizer/): also store caption embeddings')
    p.add_argument('--text-encoder-kind', choices=sorted(TEXT_KINDS),
                   help='the --text-encoder folder\'s model (default t5)')
    p.add_argument('--max-length', type=int, help='caption tokens (default: 120 for '
                   'T5, 77 for CLIP)')
    p.add_argument('--hidden-layer', type=int, help='text encoder hidden state to keep '
                   '(default: the last, after the final norm)')
    p.add_argument('--text-encoder-dtype', choices=['float32', 'bfloat16', 'float16'],
                   help='load the text encoder in this dtype (default '
                   'float32: T5-XXL\'s weights are 17.7 GiB, 8.9 in bfloat16, as PixArt and '
                   'Open-Sora load it; float16 overflows in T5 v1.1 but for what '
                   'transformers keeps in float32); sample with the same '
                   'model.text_encoder.dtype')
    p.add_argument('--store', choices=['moments', 'samples'], default='moments',
                   help='keep the scaled posterior mean+std, or one scaled sample')
    p.add_argument('--flip', action='store_true',
                   help='also encode a horizontally flipped copy of every item')
    p.add_argument('--dtype', choices=['float16', 'bfloat16', 'float32'], default='float16')
    p.add_argument('--shard-size', type=int,
                   help='items per shard, held in memory until written (default: the '
                   f'store\'s own when resuming, else {SHARD_SIZE}, or {TEXT_SHARD_SIZE} '
                   'with --text-encoder: each caption keeps max-length x width x 2 bytes '
                   '(x4 in float32), 0.94 MiB for T5-XXL at 120 tokens, ~1 GiB a shard)')
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
                   help='latent scale (default: the VAE config\'s scaling_factor, else '
                   '0.18215 for --vae and 1 for --video-vae)')
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
    image_size='--image-size',  # (num_source_items: source_count_changed)
    num_frames='--num-frames', size='--size', frame_stride='--frame-stride',
    target_fps='--target-fps', clips_per_video='--clips-per-video', pad='--pad',
    seed='--seed',
    text_encoder='--text-encoder',
    text_encoder_kind='--text-encoder-kind', hidden_layer='--hidden-layer',
    text_encoder_dtype='--text-encoder-dtype',
    text_shape='--text-encoder / --max-length',
    pooled_dim='--text-encoder-kind',
    classes='the class folders of --data-path, or the class_name column of --manifest',
    video_reader='the version of mmsora that read the videos: extract into a new --out, '
    'or go on with that version')


# Settings a store records only where they differ from these defaults (stores written
# before they were recorded hold none, and were written with the default or not at all):
# a refusal shows the default where the store (or the run) records none.
UNRECORDED_DEFAULTS = dict(seed=0, text_encoder_dtype=UNRECORDED_TEXT_ENCODER_DTYPE)


def with_option(error) -> str:
    """The store's refusal of other settings, with the option that sets the one named."""
    text = str(error)
    found = re.search(r' written with (\w+)=', text)
    key = found.group(1) if found else None
    if key in UNRECORDED_DEFAULTS:
        text = re.sub(rf'\b{key}=None\b', f'{key}={UNRECORDED_DEFAULTS[key]!r}', text)
    option = OPTION_OF.get(key)
    return f'{text} (set by {option})' if option else text


def check_args(args):
    check_at_least(args, ('image_size', 'num_frames', 'shard_size', 'batch_size',
                          'micro_batch_size', 'frame_stride', 'max_length',
                          'clips_per_video'))
    if args.target_fps is not None and not 0 < args.target_fps < float('inf'):
        fail(f'--target-fps must be a positive number, got {args.target_fps:g}')
    if args.num_workers is None:
        args.num_workers = min(4, len(os.sched_getaffinity(0)) if hasattr(
            os, 'sched_getaffinity') else os.cpu_count() or 1)
    if args.num_workers < 0:
        fail(f'--num-workers must be >= 0, got {args.num_workers}')
    if args.size is not None and len(args.size) > 2:
        fail(f'--size takes H or H W, got {len(args.size)} numbers')
    if args.data_path and (args.size or args.frame_stride or args.target_fps or args.pad
                           or args.clips_per_video != 1):
        fail('--size, --frame-stride, --target-fps, --pad and --clips-per-video are for '
             'videos (--manifest)')
    check_text_encoder_options(args)
    # before the inputs are scanned: no VAE of this tool encodes to Stage C latents
    refuse_stable_cascade(args.vae, '--vae')
    refuse_stable_cascade(args.video_vae, '--video-vae')


# The options that set how captions are encoded, with their defaults (None: the text
# encoder's own). They are read only with --text-encoder.
TEXT_ENCODER_OPTIONS = dict(text_encoder_kind='t5', max_length=None, hidden_layer=None,
                            text_encoder_dtype=UNRECORDED_DEFAULTS['text_encoder_dtype'])


def check_text_encoder_options(args) -> None:
    """Refuse a text encoder's option given without ``--text-encoder``: the store
    was written without caption embeddings and the option was ignored without a word
    (``--text-encoder-dtype bfloat16`` from a recipe whose --text-encoder line was
    left out). Then set the defaults of those not given."""
    given = [f'--{key.replace("_", "-")}' for key in TEXT_ENCODER_OPTIONS
             if getattr(args, key) is not None]
    if given and not args.text_encoder:
        them = 'it' if len(given) == 1 else 'them'
        named = ' and '.join([', '.join(given[:-1]), given[-1]] if given[:-1] else given)
        fail(f'{named} {"is" if len(given) == 1 else "are"} for caption '
             f'embeddings, which this run does not store: give --text-encoder DIR with '
             f'{them}, or leave {them} out')
    for key, default in TEXT_ENCODER_OPTIONS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)


def check_out_folder(out: str) -> None:
    """Refuse an ``--out`` that is a file, or lies under one, before any model loads.
    Before, the store's writer met it after they loaded: "[Errno 17] File exists".

    Refuse a folder of other files too (photos, a checkpoint folder): before, the
    shards and index.json were written among them without a word. An empty folder,
    or one holding a store's files (begun or finished), is taken."""
    if osp.exists(out) and not osp.isdir(out):
        fail(f'--out must be a folder (the store): {out} is a file')
    refused = foreign_folder_message(out)
    if refused:
        fail(refused)
    parent = osp.dirname(osp.abspath(out))
    while not osp.exists(parent) and parent != osp.dirname(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        fail(f'--out {out}: {parent} is a file, not a folder')  # (check_output_path's)


# --------------------------------------------------------------------------- #
#                                 Distributed                                  #
# --------------------------------------------------------------------------- #
def init_dist(device):
    """Join the torchrun process group when WORLD_SIZE > 1; returns (rank, world, device)."""
    world = int(os.environ.get('WORLD_SIZE', 1))
    if world <= 1:
        return 0, 1, torch.device(device)
    on_cuda = device.startswith('cuda')
    if on_cuda:  # (the GPU of its LOCAL_RANK; one named, where it is the machine's one rank)
        if torch.device(device).index is None:
            device = f'cuda:{int(os.environ.get("LOCAL_RANK", 0))}'
        torch.cuda.set_device(device)
    # Past the lock's word at the start (lock_out), the ranks meet only at the end, in
    # the barrier before rank 0 writes the index: a rank with fewer (or no) shards
    # waits there while the others encode, which can take hours; NCCL's default
    # timeout (10 min) ended it, torchrun then stopped the ranks still encoding, and a
    # store of fewer shards than GPUs never finished.
    import datetime
    dist.init_process_group(backend='nccl' if on_cuda else 'gloo',
                            timeout=datetime.timedelta(days=7))
    return dist.get_rank(), dist.get_world_size(), torch.device(device)


def check_gpus_for_ranks(device) -> None:
    """Under torchrun on CUDA each rank encodes on the GPU of its LOCAL_RANK
    (:func:`init_dist`): more processes than the machine has GPUs stopped the ones past
    them on a CUDA 'invalid device ordinal' traceback, after the source was read, while
    the others waited in the process group's start. Refused before anything is read,
    as is --device cuda:N there (each rank took its own GPU without a word)."""
    if int(os.environ.get('WORLD_SIZE', 1)) > 1 and device.startswith('cuda'):
        check_gpu_of_local_rank(device, f'a launch of {os.environ["WORLD_SIZE"]} processes')
        check_gpu_per_process('--device cpu', cpu_under_srun='--device cpu')


def adopt_slurm_tasks() -> None:
    """Under ``srun --ntasks N`` (no torchrun: WORLD_SIZE unset), take the ranks from
    SLURM's variables, as ``--launcher slurm`` does for training: each task encoded
    every shard into the same folder."""
    if 'WORLD_SIZE' in os.environ or int(os.environ.get('SLURM_NTASKS', 1)) <= 1 \
            or 'SLURM_PROCID' not in os.environ:
        return
    from mmsora.engine.compat import _slurm_env
    _slurm_env()


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier(**barrier_device_ids())


# --------------------------------------------------------------------------- #
#                                   Building                                   #
# --------------------------------------------------------------------------- #
def build_source(args):
    try:
        if args.data_path:
            try:
                return ImageSource(args.data_path, args.image_size)
            except ValueError:  # (looked for only then: an ImageNet is not walked twice)
                refuse_video_folder(args.data_path)
                raise
        size = args.size or [args.image_size]
        return ClipSource(args.manifest, args.num_frames, (size[0], size[-1]),
                          frame_stride=args.frame_stride, target_fps=args.target_fps,
                          pad=args.pad, data_root=args.data_root,
                          require_caption=bool(args.text_encoder),
                          clips_per_video=args.clips_per_video)
    except (FileNotFoundError, ValueError, ManifestError) as e:
        fail(e)


def refuse_video_folder(root: str) -> None:
    """Refuse a ``--data-path`` of videos in class folders (UCF-101's layout, as Latte
    reads it) in one line saying how to extract them: before, it was 'holds no images
    in class subfolders (expected root/class_name/*.jpg|...)', which named pictures
    alone. A folder holding pictures too is left to ImageSource."""
    if not osp.isdir(root):
        return
    videos = pictures = 0
    for dirpath, _, filenames in os.walk(root, followlinks=True):
        for name in filenames:
            ext = osp.splitext(name)[1].lower()
            videos += ext in VIDEO_EXTENSIONS
            pictures += ext in IMG_EXTENSIONS
    if videos and not pictures:
        manifest = osp.join(root, 'train.csv')
        fail(f'--data-path {root} holds videos ({plural(videos, "file")}), not pictures: '
             f'list them with tools/make_manifest.py {root} --out {manifest} '
             f'--label-from-folder (a class per folder), then give --manifest {manifest}')


def video_vae_class(folder: str) -> str:
    """The class a video VAE folder names in its config.json (or its vae/ subfolder's),
    for a ``--video-vae`` without ``--video-vae-class``."""
    from mmsora.models.vaes.autoencoder_kl import folder_vae_class, vae_folder
    from mmsora.utils.checkpoint import folder_model
    root = vae_folder(folder)  # (the folder AutoencoderKLWrapper._load reads)
    found = folder_vae_class(root)
    if found in VIDEO_VAE_CLASSES:
        return found
    if found == 'AutoencoderKL':
        raise ValueError(f'--video-vae {folder}: an image VAE (AutoencoderKL, its '
                         'config.json says): give it with --vae')
    holds = folder_model(root)
    if holds and holds.startswith('transformers '):  # (was: 'names no video VAE class')
        raise ValueError(f'--video-vae {folder} holds a {holds} (its config.json), not a '
                         'diffusers video VAE: give the VAE\'s folder (a text encoder goes '
                         'to --text-encoder)')
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


def old_vae_scale(args, error) -> str:
    """What keeps a store refused for its scale where an earlier version wrote it: that
    scaled every --vae store by 0.18215, not by the VAE folder's ``scaling_factor``
    (SDXL's 0.13025), so rerunning its command met the refusal."""
    if not (args.vae and args.scale_factor is None
            and ' written with scale_factor=0.18215 ' in str(error)
            and image_vae_scale(args) != 0.18215):
        return ''
    return ("; earlier versions scaled every --vae store by 0.18215 (not the VAE folder's "
            "scaling_factor): '--scale-factor 0.18215' keeps this store")


def image_vae_scale(args) -> float:
    """--vae's latent scale: --scale-factor, else the folder's config.json
    ``scaling_factor`` (SD's VAEs 0.18215, SDXL's 0.13025), else 0.18215. SDXL's VAE
    was scaled by SD's 0.18215 without a word."""
    from mmsora.models.vaes.autoencoder_kl import folder_scaling_factor
    if args.scale_factor is not None:
        return args.scale_factor
    found = folder_scaling_factor(args.vae) if osp.isdir(args.vae) else None
    return 0.18215 if found is None else found


def build_vae(args):
    micro = args.micro_batch_size or args.batch_size
    try:
        if args.vae:
            vae = AutoencoderKLWrapper(pretrained_path=args.vae, micro_batch_size=micro,
                                       scale_factor=image_vae_scale(args))
        else:
            vae = VideoVAEWrapper(args.video_vae_class or video_vae_class(args.video_vae),
                                  pretrained_path=args.video_vae,
                                  scale_factor=args.scale_factor, micro_batch_size=micro)
        vae.vae  # load now: a bad folder should fail before any work starts
    except (FileNotFoundError, OSError, ValueError) as e:
        fail(e)
    return vae


def note_long_captions(text_encoder, source) -> None:
    """Say, before encoding, how many captions are longer than --max-length tokens
    (they are cut there: a 300-word caption kept its first 120 tokens without a
    word), with the longest's length (rank 0)."""
    if text_encoder is None or launch_rank() != 0:
        return
    captions = [c for c in source.captions if isinstance(c, str)]
    long = text_encoder.longer_than_max_length(captions)
    if long:
        longest = max(len(ids) for ids in text_encoder.tokenizer(
            [captions[i] for i in long])['input_ids'])
        note(f'{plural(len(long), "caption")} of {len(captions)} '
             f'{"is" if len(long) == 1 else "are"} longer than --max-length '
             f'{text_encoder.max_length} tokens (the longest {longest}, e.g. '
             f'{captions[long[0]][:60]!r}) and will be cut there; give a larger '
             '--max-length to keep them whole')


def build_text_encoder(args):
    if not args.text_encoder:
        return None
    try:
        enc = HFTextEncoder(args.text_encoder, kind=args.text_encoder_kind,
                            max_length=args.max_length, hidden_layer=args.hidden_layer,
                            dtype=args.text_encoder_dtype, micro_batch_size=args.batch_size)
        enc.encoder  # load now
    except (FileNotFoundError, OSError, ValueError, ImportError) as e:
        fail(e)
    return enc


def latent_shape_of(args, vae, source):
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
        shape = shape if frames else (shape[0], *shape[2:])
    else:
        shape = (vae.latent_channels, *((frames,) if frames else ()), h // f, w // f)
    warn_odd_latents(args, (h, w), f, shape[-2:])
    return shape


def warn_odd_latents(args, size, factor, sides):
    """Warn (rank 0) when a latent side is odd: every DiT / VideoDiT patch (the models
    that train on these stores) is 2 or more, so training stopped on such a store
    ('input size 17x17 is not a multiple of the patch size 2') after the whole
    extraction, and it had to be done again."""
    if all(side % 2 == 0 for side in sides) or launch_rank() != 0:
        return
    option = '--image-size' if args.data_path else '--size'
    print(f'warning: {option} {size[0]}x{size[1]} gives latents of {sides[0]}x{sides[1]} '
          f'(the VAE factor {factor}): an odd side fits no DiT or VideoDiT patch (2, 4 or '
          f'8), and training on this store stops (input size not a multiple of the patch '
          f'size); give sides that are multiples of {factor} x the patch size ({2 * factor} '
          'for a /2 model)', file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
#                                    Main                                      #
# --------------------------------------------------------------------------- #
def launch_rank() -> int:
    """This process's rank as torchrun set it, before the process group is joined."""
    return int(os.environ.get('RANK', 0)) if int(os.environ.get('WORLD_SIZE', 1)) > 1 else 0


def store_meta(args, source) -> dict:
    """The extraction settings recorded in the store (a rerun with others is refused)."""
    meta = dict(source=osp.abspath(args.data_path or args.manifest))
    if args.data_path:
        meta.update(classes=source.classes, image_size=args.image_size)
    else:
        meta.update(num_frames=args.num_frames, size=list(source.size),
                    frame_stride=args.frame_stride, target_fps=args.target_fps,
                    video_reader=READER_VERSION)
        if args.clips_per_video != 1:  # (stores of one clip a video record none)
            meta.update(clips_per_video=args.clips_per_video)
        # Unrecorded before, a rerun with --pad (as a short clip's reason advises) into
        # a complete store did nothing, and into a begun one padded its other shards'
        # short clips only. Recorded where given: older stores are taken as unpadded.
        if args.pad is not None:
            meta.update(pad=args.pad)
        # Recorded as an image store's class folders are, so that stores of two label
        # maps (biking/ bunny/ and a_bunny/ b_biking/: label 0 is another class in
        # each) are refused together (PackedLatentDataset); before, they trained as one.
        classes = manifest_classes(args, source)
        if classes is not None:
            meta.update(classes=classes)
    if args.store == 'samples' and args.seed != UNRECORDED_DEFAULTS['seed']:
        # The noise's seed: a resume with another one mixed the noise of two seeds in
        # one store. Recorded where not the default, which older stores are taken as.
        meta.update(seed=args.seed)
    if args.text_encoder:
        # hidden_layer: which of the encoder's hidden states the tokens are (None: the
        # last, after the final norm). Unrecorded before, a resume with another one
        # mixed the embeddings of two layers in one store. The folder is recorded
        # absolute, as the source is: a rerun compares it with its own --text-encoder
        # from its own working directory (a relative one recorded, as older stores
        # hold, is taken from there as before).
        meta.update(text_encoder=osp.abspath(args.text_encoder),
                    text_encoder_kind=args.text_encoder_kind,
                    hidden_layer=args.hidden_layer)
        # The encoder's dtype (its embeddings differ by rounding): recorded where not the
        # default, float32, which stores of an older mmsora were encoded in.
        if args.text_encoder_dtype != UNRECORDED_DEFAULTS['text_encoder_dtype']:
            meta.update(text_encoder_dtype=args.text_encoder_dtype)
    return meta


def manifest_classes(args, source):
    """The manifest's class names by label (its ``class_name`` column, which
    tools/make_manifest.py --label-from-folder writes), None for a label no row names;
    None when no labelled row has one."""
    names = {}
    for row in source.rows:
        label, name = row.get('label'), row.get('class_name')
        if label is None or label < 0 or name is None:
            continue
        known = names.setdefault(label, str(name))
        if known != str(name):
            fail(f'--manifest {args.manifest}: label {label} is class {known!r} in one row '
                 f'and {str(name)!r} in another ({row["path"]}): give each label one '
                 'class_name')
    if not names:
        return None
    return [names.get(label) for label in range(max(names) + 1)]


def recorded_vae(args) -> str:
    """The --vae / --video-vae folder as the store records it: absolute, as the text
    encoder's and the source are. Recorded as given, a relative folder was read from
    the training run's working directory (tools/train.py's VAE checks: a false note of
    another VAE, or its class not read) and from a rerun's. A relative one an older
    store records is still taken from the working directory of the run that reads it."""
    return osp.abspath(args.vae or args.video_vae)


def known_settings(args, source, fingerprint) -> dict:
    """The store settings this run knows before its models load (not the latent shape,
    the text width or a video VAE's own scale factor)."""
    settings = dict(dtype=args.dtype, content=args.store, num_copies=2 if args.flip else 1,
                    vae=recorded_vae(args), num_source_items=len(source),
                    source_fingerprint=fingerprint, text_shape=None)
    if args.text_encoder:
        settings['text_shape'] = [args.max_length or TEXT_KINDS[args.text_encoder_kind][1],
                                  None]
    if args.shard_size is not None:
        settings['shard_size'] = args.shard_size
    if args.scale_factor is not None or args.vae:
        settings['scale_factor'] = (image_vae_scale(args) if args.vae
                                    else args.scale_factor)
    return settings


def source_changed(args) -> str:
    if args.manifest:
        return (f'--manifest {args.manifest} changed since the store at {args.out} was '
                'started (its rows are other ones: other files, captions or labels, or '
                'another order): extract into a new --out')
    return (f'--data-path {args.data_path}: the image folder changed since the store at '
            f'{args.out} was started (other files, or files in other classes): extract '
            'into a new --out')


def source_count_changed(args, source, error) -> str:
    """Why a store begun from another number of source items is refused, in the
    inputs' terms, and what to do. Before, it named ``num_source_items``, a setting no
    option sets, and did not say how to add the rows a manifest has gained."""
    if args.data_path:
        return (f'--data-path {args.data_path} has {plural(error.given, "picture")} where '
                f'the store at {args.out} was begun from {error.recorded}: extract it into '
                'a new --out')
    had, has = error.recorded // args.clips_per_video, len(source.rows)
    what = (f'--manifest {args.manifest} has {plural(has, "row")} where the store at '
            f'{args.out} was begun from {had}')
    if has < had:
        return f'{what}: give it the rows the store was begun from, or use a new --out'
    begun = copy.copy(source)  # (its first rows: those the store holds, if unchanged)
    begun.rows = source.rows[:had]
    if error.fingerprint is None:  # (an older store: which rows it holds is not known)
        new = ': put the rows added since in a manifest of their own'
    elif begun.fingerprint(with_captions=bool(args.text_encoder)) != error.fingerprint:
        first = ('its first row is not the one' if had == 1 else
                 f'its first {had} are not those')
        return (f'{what}, and {first} the store holds (other files, captions or labels, '
                'or another order): extract it into a new --out')
    elif has - had == 1:
        new = f' (row {has} is new): put it in a manifest of its own'
    else:
        new = f' (rows {had + 1}-{has} are new): put them in a manifest of their own'
    return (f'{what}{new}, extract that into a new --out and train on both stores: '
            "train_dataloader.dataset.store=['old', 'new'] (docs/video.md)")


def check_out(args, source, meta):
    """What is already in ``--out``, read before any model loads: refuses a store begun
    with other known settings or from other source items, and sets ``--shard-size``
    when it is not given (the store's own, else the default).

    Before, the models loaded first (minutes with T5-XXL), and a store begun from a
    manifest whose rows changed but not their count was resumed (or found complete)
    as if it matched. Every torchrun rank reads the store before any joins the process
    group, so before any rank writes: all decide alike. :func:`main` reads it again
    once the lock is held (:func:`read_progress`).

    Returns:
        tuple: :func:`read_store_progress`'s dict (None when nothing was begun) and the
        source items' fingerprint."""
    check_out_folder(args.out)
    fingerprint = source.fingerprint(with_captions=bool(args.text_encoder))
    return read_progress(args, source, meta, fingerprint), fingerprint


def read_progress(args, source, meta, fingerprint, checked=()):
    """:func:`read_store_progress` of ``--out``, its refusals in one line; sets
    ``--shard-size`` when it is not given (the store's own, else the default).
    ``checked``: the records an earlier read found sound (not checked again)."""
    try:
        progress = read_store_progress(args.out, known_settings(args, source, fingerprint),
                                       meta, checked)
    except SourceChangedError:
        fail(source_changed(args))
    except SourceCountError as e:
        fail(source_count_changed(args, source, e))
    except ValueError as e:
        fail(with_option(e) + old_vae_scale(args, e))
    if args.shard_size is None:
        args.shard_size = (progress['header']['shard_size'] if progress else
                           TEXT_SHARD_SIZE if args.text_encoder else SHARD_SIZE)
        if not progress:  # every rank gets a shard to encode (shards are dealt out
            # whole: 1000 captioned clips made one 1024-item shard, 7 of 8 GPUs idle)
            world = int(os.environ.get('WORLD_SIZE', 1))
            if world > 1:
                args.shard_size = max(1, min(args.shard_size, -(-len(source) // world)))
    return progress


def nothing_to_do(args, progress):
    """The summary of a store that is complete already: no model is loaded."""
    if launch_rank() != 0:
        return None
    skipped = progress['num_skipped']
    if not progress['num_items']:
        fail(f'no latents written to {args.out}: '
             + (f'all {skipped} inputs were unreadable' if skipped else 'no inputs'))
    print(f'{PROG}: {args.out} is complete ({plural(progress["num_items"], "item")} in '
          f'{plural(progress["num_shards"], "shard")}): nothing to do'
          + (f'; {skipped_inputs(progress["shards"])}' if skipped else ''))
    back = back_again(args, progress['shards']) if skipped else ''
    if back:
        print(f'{PROG}: {back}')
    return dict(num_items=progress['num_items'], num_shards=progress['num_shards'],
                complete=True, num_skipped=skipped, shards_written=0, skipped_this_run=[],
                latent_shape=list(progress['header']['latent_shape']))


def back_again(args, shards) -> str:
    """A line on the skipped videos that could be added now, '' when none: those skipped
    as not found whose file is there now (a disk mounted again) and those skipped as
    unreadable whose file changed since their shard was written (a fixed copy). A
    complete store takes no more items, so it says how to add them: another --out,
    trained on with this one. Before, a rerun listed them with their old reason only,
    as if they were still missing."""
    if not args.manifest:  # (an image folder's items are what listing it found)
        return ''
    seen, back = set(), []  # back: (video, kind) in the store's order, each video once
    for shard in shards:
        written = None  # (the shard file's mtime, read once a shard)
        for name, why in zip(shard['skipped'], shard.get('skipped_why', ())):
            clip = CLIP_NAME.fullmatch(name)
            video = clip.group(1) if clip else name
            if video in seen or not why:
                continue
            seen.add(video)
            if why.startswith('video file not found'):
                if osp.isfile(video):
                    back.append((video, 'not found then and there now'))
            elif why.startswith('cannot read video') and osp.isfile(video):
                if written is None:
                    written = mtime(osp.join(args.out, shard['file']))
                if written is not None and (mtime(video) or 0) > written:
                    back.append((video, 'unreadable then and changed since'))
    if not back:
        return ''
    kinds = {}
    for _, kind in back:
        kinds[kind] = kinds.get(kind, 0) + 1
    one = len(back) == 1
    said = (f'{back[0][1]}: {back[0][0]}' if one else '; '.join(
        f'{count} {kind}' for kind, count in kinds.items()) + f'; the first: {back[0][0]}')
    return (f'{plural(len(back), "skipped video")} can be added now ({said}): put '
            f'{"its row" if one else "their rows"} in a manifest of '
            f'{"its" if one else "their"} own, extract that into another --out and train '
            "on both stores: train_dataloader.dataset.store=['old', 'new'] (docs/video.md); "
            f'{args.out} is complete and takes no more')


def mtime(path) -> Optional[int]:
    """``path``'s modification time in ns, None when it cannot be read."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def warn_slow_clips(args, source):
    """Warn once when ``--target-fps`` is above some clips' frame rate: those take every
    frame (stride 1) and run at their own rate. Before, it was silent."""
    if not args.target_fps or launch_rank() != 0:
        return
    count, row = source.slower_than(args.target_fps)
    if count:
        print(f'warning: {count} of {plural(len(source), "video")} '
              f'{"is" if count == 1 else "are"} slower than --target-fps '
              f'{args.target_fps:g} (e.g. {row["path"]} at {row["fps"]:g} fps): every frame '
              'of those is taken (stride 1), so their clips run at their own rate, not '
              f'{args.target_fps:g} fps', file=sys.stderr, flush=True)


class ShardBuffer:
    """Collects one shard's fields (latents, text) until all of its source items are
    through, each in one tensor of the shard's length made at its first item (memory
    is taken as rows are filled), in the dtype it is written in.

    Before, each item's text embeddings were kept as a float32 tensor (1.9 MiB of
    T5-XXL tokens) and stacked (another copy) at the shard's end: 7.5 GiB held and 15
    at the end at the default 4096 items a shard; now 0.94 MiB an item in float16, and
    text stores default to 1024 a shard."""

    def __init__(self, shard_id, start, stop):
        self.shard_id, self.start, self.stop = shard_id, start, stop
        self.fields, self.labels, self.skipped, self.seen = {}, [], [], 0
        self.why = []  # beside skipped: each one's reason
        self.kept = []  # beside labels: each kept item's source index
        self.skipped_at = []  # beside skipped: each one's source index

    @property
    def full(self):
        return self.seen == self.stop - self.start

    def add(self, fields, label, index):
        """Keep one item: ``{name: tensor}``, its label and its source index."""
        row = len(self.labels)
        for name, value in fields.items():
            if name not in self.fields:
                self.fields[name] = torch.empty((self.stop - self.start, *value.shape),
                                                dtype=value.dtype)
            self.fields[name][row] = value
        self.labels.append(label)
        self.kept.append(index)

    def skip(self, index, name, why):
        """Record source item ``index`` (``name``) as left out, and why."""
        self.skipped_at.append(index)
        self.skipped.append(name)
        self.why.append(why)

    def skipped_in_order(self):
        """``(names, reasons)`` of the items left out, in source order (those found
        non-finite at the shard's end come after the unreadable ones otherwise)."""
        order = sorted(range(len(self.skipped)), key=self.skipped_at.__getitem__)
        return [self.skipped[i] for i in order], [self.why[i] for i in order]

    def take(self, name, empty_shape, dtype):
        """The kept items' ``name`` (n, ...), or an empty tensor when none was kept."""
        if name in self.fields:
            return self.fields[name][:len(self.labels)]
        return torch.zeros(0, *empty_shape, dtype=dtype)


def flush(writer, buf, args, item_shape, source, skipped_now):
    """Write a finished shard (sampling from the moments for ``--store samples``),
    leaving out the items whose values hold NaN or inf as stored (named, with their
    reason, as unreadable inputs are: ``skipped_now`` gets their names)."""
    kept = TORCH_DTYPES[args.dtype] if args.store == 'moments' else torch.float32
    moments = buf.take('latents', item_shape, kept)
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
        dtype = TORCH_DTYPES[args.dtype]
        text = dict(text_embeds=buf.take('text_embeds', (L, D), dtype),
                    text_mask=buf.take('text_mask', (L,), torch.bool))
        if writer.header['pooled_dim']:
            text['pooled_text_embeds'] = buf.take('pooled_text_embeds',
                                                  (writer.header['pooled_dim'],), dtype)
    labels = buf.labels
    # The store's rule, on the values as they are stored: a value past float16's range
    # (finite where it was computed) passed the check of each batch, and the writer
    # then refused the whole shard, stopping the run.
    bad = nonfinite_items(dict(latents=latents, **(text or {})), args.dtype)
    if bad:
        keep = torch.tensor([row for row in range(len(labels)) if row not in bad],
                            dtype=torch.long)
        latents, labels = latents[keep], [labels[row] for row in keep.tolist()]
        if text is not None:
            text = {name: value[keep] for name, value in text.items()}
        for row in sorted(bad):
            index, why = buf.kept[row], nonfinite_reason(bad[row][0], args.dtype)
            tqdm.write(f'{PROG}: skipping {source.names[index]}: {why}')
            buf.skip(index, source.names[index], why)
            skipped_now.append(source.names[index])
    skipped, why = buf.skipped_in_order()
    writer.write_shard(buf.shard_id, latents, labels, skipped, text=text, why=why,
                       finite_checked=True)  # (the scan above: one a shard, not two)


def nonfinite_reason(field, dtype) -> str:
    """Why an item whose ``field`` holds NaN or inf as stored in ``dtype`` is skipped
    (training would meet it as a NaN loss)."""
    return (f'its {field.replace("_", " ")} hold NaN or inf ({dtype}): the encoder '
            'overflowed or the input is broken' + (
                " (or values are past float16's range, 65504: --dtype bfloat16 keeps them)"
                if dtype == 'float16' else ''))


def encode_text(text_encoder, captions, device, dtype):
    """``{field: (n, ...) CPU tensor}`` of the captions' text fields, the embeddings in
    the store's ``dtype`` (converted here, a batch at a time, not when the shard is
    written)."""
    emb, mask, pooled = text_encoder.encode(captions, device=device)
    fields = dict(text_embeds=emb.to(dtype).cpu(), text_mask=mask.cpu())
    if pooled is not None:
        fields['pooled_text_embeds'] = pooled.to(dtype).cpu()
    return fields


def encode_batch(x, vae, text_encoder, captions, args, device):
    """``{field: (n, ...) CPU tensor}`` of a batch of readable items: ``latents`` (n,
    copies, 2, ...) (the moments: in the store's dtype, or float32 for ``--store
    samples``, sampled when the shard is written) and the text fields."""
    x = x.to(device, non_blocking=True)
    copies = 2 if args.flip else 1
    if args.flip:
        x = torch.cat([x, x.flip(-1)])  # originals then mirrored copies
    mean, std = vae.encode_moments(x)
    moments = torch.stack([mean, std], 1)  # (n*copies, 2, C, ...)
    kept = TORCH_DTYPES[args.dtype] if args.store == 'moments' else torch.float32
    fields = dict(latents=moments.to(kept).cpu().unflatten(0, (copies, -1)).transpose(0, 1))
    if text_encoder is not None:
        fields.update(encode_text(text_encoder, captions, device, TORCH_DTYPES[args.dtype]))
    return fields


def summarize(args, writer, pending, skipped_now, latent_shape):
    """Finalize the store (rank 0, after every rank is done) and print what it holds."""
    index = writer.finalize()
    # shards_written / skipped_this_run count rank 0's work only.
    summary = dict(num_items=index['num_items'], num_shards=len(index['shards']),
                   complete=index['complete'], num_skipped=index['num_skipped'],
                   shards_written=len(pending), skipped_this_run=skipped_now,
                   latent_shape=list(latent_shape))
    flips = (f' (x2 with the flipped copies: {2 * index["num_items"]} latents)'
             if index['num_copies'] == 2 else '')
    print(f'{PROG}: {plural(index["num_items"], "item")}{flips}, latents of shape '
          f'{tuple(latent_shape)}, in '
          f'{len(index["shards"])}/{index["num_shards"]} shards at {args.out} '
          f'({plural(len(pending), "shard")} written by rank 0 in this run); '
          + skipped_inputs(index['shards']))
    return summary, [s for sh in index['shards'] for s in sh['skipped']]


def skipped_inputs(shards) -> str:
    """'skipped N unreadable or too short inputs: NAME (why); ...' of the shards' records
    (the first 10 inputs named), each video once: its clips skipped for one kind of
    reason in one part ('short8.mp4: clips 1-20 of 20 (why)'), the clips past a cut-short
    video's readable end in one, whichever frame each asked for ('cut.mp4: clips 13-30 of
    30 past its readable end (only 109 frames could be decoded)'). Before, such a video
    took all 10 places one clip at a time (each reason named its frame), and the videos
    after it were named only in index.json."""
    skipped = [s for sh in shards for s in sh['skipped']]
    # the reasons this run's and earlier runs' shards recorded (older stores: none)
    reasons = {name: for_another_out(why) for sh in shards
               for name, why in zip(sh['skipped'], sh.get('skipped_why', ()))}
    videos = {}  # video: {(clips of it, kind of reason): its clip numbers, in order met}
    for name in skipped:
        found = CLIP_NAME.fullmatch(name)
        video, of, clip = ((found.group(1), found.group(3), int(found.group(2))) if found
                           else (name, None, None))
        kind = (of, reason_kind(reasons.get(name), of))
        videos.setdefault(video, {}).setdefault(kind, []).append(clip)
    entries = [video + ''.join(
        ((' and ' if k else ': ') + f'{clip_ranges(clips)} of {of}' if of else '') + why
        for k, ((of, why), clips) in enumerate(kinds.items()))
        for video, kinds in videos.items()]
    more = len(entries) - 10
    return (f'skipped {len(skipped)} unreadable or too short input{"s" * (len(skipped) != 1)}'
            + (': ' + '; '.join(entries[:10]) if skipped else '')
            + (f"; ... and {more} more (the store's index.json names every one)"
               if more > 0 else ''))


# How a too-short clip's reason advises --pad (ClipSource's pad_hint).
PAD_HINT = '--pad loop (or repeat_last)'


def for_another_out(why: str) -> str:
    """A skipped clip's reason as the summary of a complete store gives it: its advice
    (shorter clips, a smaller stride, ``--pad``) is for another --out. Before, a rerun
    that followed it into the same --out found the store complete and advised it again
    (--num-frames and --frame-stride are refused there; --pad now is too)."""
    return why.replace(f'or {PAD_HINT}', f'or {PAD_HINT}, into another --out') if why \
        else why


# The name ClipSource gives a clip of a video it takes several of.
CLIP_NAME = re.compile(r'(.*) \(clip (\d+) of (\d+)\)', re.S)
# A clip past the end of a video that decodes fewer frames than it says it has (cut
# short): the frame named differs from clip to clip, the count decoded does not.
PAST_END = re.compile(r'cannot read video .*: frame \d+ was asked for but only '
                      r'(\d+ frames?) could be decoded', re.S)


def reason_kind(why, of) -> str:
    """How a skipped item's reason shows in the summary: ' (why)', or for a clip past
    its video's readable end ' past its readable end (only N frames could be decoded)'
    (the same for every such clip of the video); '' for no reason recorded."""
    if why is None:
        return ''
    found = PAST_END.fullmatch(why) if of else None
    if found:
        return f' past its readable end (only {found.group(1)} could be decoded)'
    return f' ({why})'


def clip_ranges(clips) -> str:
    """'clip 3', or 'clips 1-4, 7' of clip numbers."""
    clips, runs = sorted(set(clips)), []
    for clip in clips:
        if runs and clip == runs[-1][1] + 1:
            runs[-1][1] = clip
        else:
            runs.append([clip, clip])
    return ('clip ' if len(clips) == 1 else 'clips ') + ', '.join(
        str(a) if a == b else f'{a}-{b}' for a, b in runs)


def encode_all(args, source, loader, bufs, writer, vae, text_encoder, device, rank,
               shard_shape, total, skipped_now):
    """Encode the pending items of ``loader`` into ``bufs``, writing each shard as
    it fills."""
    unit = 'img' if args.data_path else 'clip'
    with tqdm(total=total, desc=f'encode (rank {rank})', disable=rank != 0,
              unit=unit, dynamic_ncols=True) as pbar:
        for batch, items in loader:
            if batch is not None:
                fields = encode_batch(
                    batch, vae, text_encoder,
                    [source.captions[g] for g, why in items if why is None], args, device)
                row = 0
            for gidx, why in items:
                buf = bufs[gidx // args.shard_size]
                if why is None:  # (one holding NaN / inf as stored: left out by flush)
                    buf.add({name: value[row] for name, value in fields.items()},
                            source.labels[gidx], gidx)
                    row += 1
                else:
                    buf.skip(gidx, source.names[gidx], why)
                    skipped_now.append(source.names[gidx])
                buf.seen += 1
                if buf.full:
                    flush(writer, bufs.pop(buf.shard_id), args, shard_shape, source,
                          skipped_now)
            pbar.update(len(items))


def lock_out(lock, rank) -> None:
    """Take ``--out``'s lock (``lock``, a :class:`StoreLock`) for this run, before the
    models load: rank 0 alone (the ranks of one run write one store by design, each its
    own shards), every rank told whether it could before any rank writes
    (:meth:`StoreLock.take`: a second run into the same --out refused, a stopped run's
    lock taken over)."""
    refused = lock.take() if rank == 0 else None
    if dist.is_available() and dist.is_initialized():
        word = [refused]  # (rank 0's: the other ranks wait here for it)
        dist.broadcast_object_list(word, src=0)
        refused = word[0]
    if refused:
        fail(refused)


def main(argv=None):
    args = parse_args(argv)
    adopt_slurm_tasks()
    check_args(args)
    check_gpus_for_ranks(args.device)
    source = build_source(args)
    meta = store_meta(args, source)
    shard_size = args.shard_size  # (as given: check_out sets it from what it finds)
    progress, fingerprint = check_out(args, source, meta)
    if progress and progress['complete']:
        return nothing_to_do(args, progress)
    # before the models load (a read-only or another user's folder: the lock met it as
    # a bare '[Errno 13] Permission denied'); a complete store is only read, above
    check_output_path(args.out, '--out', folder=True)
    rank, world, device = init_dist(args.device)
    lock = StoreLock(args.out)
    try:
        lock_out(lock, rank)
        # read again under the lock, still before the models load: a run that ended
        # since the read above (holding the lock then) may have finished the store, or
        # begun it with another shard size; before, this run loaded the models for it
        args.shard_size = shard_size
        progress = read_progress(args, source, meta, fingerprint,
                                 progress['checked'] if progress else ())
        barrier()  # (every rank has read it before any writes)
        if progress and progress['complete']:
            close_process_group()
            return nothing_to_do(args, progress)
        return extract(args, source, meta, progress, fingerprint, rank, world, device)
    finally:
        lock.release()  # (nothing where this process holds none: another rank's)


def extract(args, source, meta, progress, fingerprint, rank, world, device):
    """Encode the pending shards of ``--out`` (``progress``: what :func:`check_out`
    found there) and finalize the store; returns the summary (rank 0)."""
    if progress and rank == 0:
        say_damaged(PROG, progress['damaged'])  # (each is encoded again)
        print(f'{PROG}: resuming: {len(progress["done"])} of '
              f'{plural(progress["num_shards"], "shard")} done at {args.out}', flush=True)
    if progress and 'video_reader' in progress['unchecked']:
        note(f'{args.out} was begun by an older mmsora, whose video reader did not turn '
             'rotated phone clips upright, widen non-square pixels or skip the frames an '
             'mp4 edit list cuts: clips of such videos in its finished shards may differ '
             'from those this run adds (extract into a new --out to have all read one way)')
    warn_slow_clips(args, source)
    vae = build_vae(args)
    text_encoder = build_text_encoder(args)
    note_long_captions(text_encoder, source)
    vae.vae.to(device)
    latent_shape = latent_shape_of(args, vae, source)
    copies = 2 if args.flip else 1
    text_shape = pooled_dim = None
    if text_encoder is not None:
        text_shape = (text_encoder.max_length, text_encoder.embed_dim)
        pooled_dim = text_encoder.pooled_dim
    try:
        writer = LatentStoreWriter(
            args.out, len(source), latent_shape, dtype=args.dtype, content=args.store,
            num_copies=copies, scale_factor=vae.scale_factor, shift_factor=vae.shift_factor,
            vae=recorded_vae(args), shard_size=args.shard_size, rank=rank,
            world_size=world, meta=meta, text_shape=text_shape, pooled_dim=pooled_dim,
            source_fingerprint=fingerprint,  # (the shards check_out found sound: each
            checked=progress['checked'] if progress else None)  # shard's files read once)
        pending = writer.pending_shards()
        if progress and progress['damaged'] and rank == 0 \
                and osp.exists(osp.join(args.out, 'index.json')):
            # the index no longer counts them (a complete store says incomplete until
            # they are written again: a run stopped before then is not read as whole)
            writer.finalize()
    except SourceChangedError:
        fail(source_changed(args))
    except SourceCountError as e:
        fail(source_count_changed(args, source, e))
    except (ValueError, OSError) as e:  # OSError: --out runs into a file
        fail(with_option(e))

    indices = [i for k in pending for i in range(*writer.shard_range(k))]
    loader = DataLoader(Subset(source, indices), batch_size=args.batch_size,
                        num_workers=args.num_workers, collate_fn=collate_sources,
                        pin_memory=device.type == 'cuda')
    bufs = {k: ShardBuffer(k, *writer.shard_range(k)) for k in pending}
    skipped_now = []
    try:
        encode_all(args, source, loader, bufs, writer, vae, text_encoder, device, rank,
                   (copies, 2, *latent_shape), len(indices), skipped_now)
    except KeyboardInterrupt:  # (a bare 'interrupted' from each rank)
        from mmsora.utils.cli import Interrupted
        raise Interrupted(f'({plural(len(writer.done_shards()), "shard")} of '
                          f'{writer.num_shards} at {args.out} are kept: rerun the same '
                          'command to go on)', quiet=rank != 0) from None

    barrier()
    summary = None
    if rank == 0:
        summary, skipped = summarize(args, writer, pending, skipped_now, latent_shape)
    close_process_group()
    if summary and summary['complete'] and not summary['num_items']:
        fail(f'no latents written to {args.out}: '
             + (f'all {len(skipped)} inputs were skipped (unreadable, too short or '
                'encoded to NaN / inf: listed above)' if skipped else 'no inputs'))
    return summary


if __name__ == '__main__':
    sys.exit(run_cli(main))
