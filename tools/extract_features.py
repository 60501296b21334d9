"""Encode an ImageFolder tree with a VAE once, into a packed latent store.

Preprocessing is DiT's (``center_crop_arr``, [-1, 1]); latents are scaled by the VAE
wrapper's scale factor (0.18215). With ``--store moments`` the scaled posterior mean and
std are kept and training draws a fresh sample each time; with ``--flip`` a mirrored
copy of every image is encoded too, so neither the posterior noise nor the flip is
frozen at extraction time (fast-DiT freezes both).

Examples::

    python tools/extract_features.py --data-path data/imagenet/train \\
        --out data/imagenet256_latents --vae checkpoints/sd-vae-ft-ema --flip
    torchrun --nproc_per_node 8 tools/extract_features.py ...   # several GPUs

Rerunning the same command after a crash continues with the unfinished shards.
"""
import argparse
import os
import os.path as osp

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmsora.datasets import (LatentStoreWriter, center_crop_arr, image_to_tensor,
                             load_image, scan_image_folder)
from mmsora.models.vaes import AutoencoderKLWrapper

PROG = 'extract_features.py'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Encode an ImageFolder tree into a packed '
                                'latent store (resumable, torchrun for several GPUs).')
    p.add_argument('--data-path', required=True, help='ImageFolder root: DIR/class/*.jpg')
    p.add_argument('--out', required=True, help='output store folder')
    p.add_argument('--vae', required=True,
                   help='local diffusers AutoencoderKL folder (or a pipeline with vae/)')
    p.add_argument('--image-size', type=int, default=256)
    p.add_argument('--store', choices=['moments', 'samples'], default='moments',
                   help='keep the scaled posterior mean+std, or one scaled sample')
    p.add_argument('--flip', action='store_true',
                   help='also encode a horizontally flipped copy of every image')
    p.add_argument('--dtype', choices=['float16', 'bfloat16', 'float32'], default='float16')
    p.add_argument('--shard-size', type=int, default=4096, help='images per shard')
    p.add_argument('--batch-size', type=int, default=32, help='images per VAE call')
    p.add_argument('--num-workers', type=int, default=4, help='image decoding workers')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--scale-factor', type=float, default=0.18215)
    p.add_argument('--seed', type=int, default=0, help='seed of --store samples noise')
    return p.parse_args(argv)


def fail(msg):
    """Exit with a one-line error."""
    raise SystemExit(f'{PROG}: error: {msg}')


# --------------------------------------------------------------------------- #
#                                  Data loading                                #
# --------------------------------------------------------------------------- #
class SourceImages(Dataset):
    """Images of the given global indices; ``None`` for files that cannot be read."""

    def __init__(self, root, samples, indices, image_size):
        self.root, self.samples, self.indices = root, samples, indices
        self.image_size = image_size

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        gidx = self.indices[i]
        path = osp.join(self.root, self.samples[gidx][0])
        try:
            image = image_to_tensor(center_crop_arr(load_image(path), self.image_size))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            image = None
        return image, gidx


def collate(batch):
    """Stack readable images; keep the global indices of all, in order."""
    images = [im for im, _ in batch if im is not None]
    return (torch.stack(images) if images else None,
            [(gidx, im is not None) for im, gidx in batch])


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
        dist.barrier()


# --------------------------------------------------------------------------- #
#                                    Main                                      #
# --------------------------------------------------------------------------- #
class ShardBuffer:
    """Collects one shard's moments until all of its source items are through."""

    def __init__(self, shard_id, start, stop):
        self.shard_id, self.start, self.stop = shard_id, start, stop
        self.moments, self.labels, self.skipped, self.seen = [], [], [], 0

    @property
    def full(self):
        return self.seen == self.stop - self.start


def flush(writer, buf, args, latent_item_shape):
    """Write a finished shard (sampling from the moments for ``--store samples``)."""
    if buf.moments:
        moments = torch.stack(buf.moments)  # (n, copies, 2, C, h, w)
    else:
        moments = torch.zeros(0, *latent_item_shape)
    if args.store == 'samples':
        # Noise seeded per shard: a resumed run draws what an uninterrupted one would.
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + buf.shard_id)
        eps = torch.randn(moments[:, :, 0].shape, generator=gen)
        latents = (moments[:, :, 0] + moments[:, :, 1] * eps).unsqueeze(2)
    else:
        latents = moments
    writer.write_shard(buf.shard_id, latents, buf.labels, buf.skipped)


def main(argv=None):
    args = parse_args(argv)
    try:
        classes, samples = scan_image_folder(args.data_path)
    except (FileNotFoundError, ValueError) as e:
        fail(e)
    try:
        vae = AutoencoderKLWrapper(pretrained_path=args.vae, scale_factor=args.scale_factor,
                                   micro_batch_size=args.batch_size)
        vae.vae  # load now: a bad --vae should fail before any work starts
    except (FileNotFoundError, OSError, ValueError) as e:
        fail(e)
    rank, world, device = init_dist(args.device)
    vae.vae.to(device)

    f = vae.downsample_factor
    if args.image_size % f:
        fail(f'--image-size {args.image_size} is not a multiple of the VAE factor {f}')
    latent_shape = (vae.latent_channels, args.image_size // f, args.image_size // f)
    copies = 2 if args.flip else 1
    try:
        writer = LatentStoreWriter(
            args.out, len(samples), latent_shape, dtype=args.dtype, content=args.store,
            num_copies=copies, scale_factor=vae.scale_factor, shift_factor=vae.shift_factor,
            vae=args.vae, shard_size=args.shard_size, rank=rank, world_size=world,
            meta=dict(classes=classes, image_size=args.image_size,
                      source=osp.abspath(args.data_path)))
    except ValueError as e:
        fail(e)

    pending = writer.pending_shards()
    indices = [i for k in pending for i in range(*writer.shard_range(k))]
    loader = DataLoader(
        SourceImages(args.data_path, samples, indices, args.image_size),
        batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate,
        pin_memory=device.type == 'cuda')
    bufs = {k: ShardBuffer(k, *writer.shard_range(k)) for k in pending}
    skipped_now = []
    with tqdm(total=len(indices), desc=f'encode (rank {rank})', disable=rank != 0,
              unit='img', dynamic_ncols=True) as pbar:
        for images, items in loader:
            if images is not None:
                x = images.to(device, non_blocking=True)
                if args.flip:
                    x = torch.cat([x, x.flip(-1)])  # originals then mirrored copies
                mean, std = vae.encode_moments(x)
                moments = torch.stack([mean, std], 1).cpu()  # (n*copies, 2, C, h, w)
                moments = moments.unflatten(0, (copies, -1)).transpose(0, 1)
                moments = iter(moments)  # (n, copies, 2, C, h, w)
            for gidx, ok in items:
                buf = bufs[gidx // args.shard_size]
                if ok:
                    buf.moments.append(next(moments))
                    buf.labels.append(samples[gidx][1])
                else:
                    buf.skipped.append(samples[gidx][0])
                    skipped_now.append(samples[gidx][0])
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
                       shards_written=len(pending), skipped_this_run=skipped_now)
        skipped = [s for sh in index['shards'] for s in sh['skipped']]
        print(f'{PROG}: {index["num_items"]} latents in {len(index["shards"])}/'
              f'{index["num_shards"]} shards at {args.out} ({len(pending)} shards '
              f'written by rank 0 in this run); skipped {len(skipped)} unreadable files'
              + (f': {", ".join(skipped[:10])}' + (' ...' if len(skipped) > 10 else '')
                 if skipped else ''))
    barrier()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return summary


if __name__ == '__main__':
    main()
