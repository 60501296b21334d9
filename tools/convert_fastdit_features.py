"""Convert fast-DiT per-file features (``N.npy`` latents + labels) to a packed store.

fast-DiT's latents are already scaled posterior samples of randomly flipped images, so
the store holds ``content='samples'`` with one copy. Resumable like the extractor.

Example::

    python tools/convert_fastdit_features.py \\
        --features-dir features/imagenet256_features \\
        --labels-dir features/imagenet256_labels --out data/imagenet256_packed
"""
import sys

import numpy as np
from tqdm import tqdm

from mmsora.datasets import LatentStoreWriter, list_npy_pairs
from mmsora.datasets.npy_latent_dataset import load_fastdit_item
from mmsora.utils.cli import ArgumentParser, UserError, run_cli

PROG = 'convert_fastdit_features.py'


def parse_args(argv=None):
    p = ArgumentParser(description='Convert fast-DiT .npy features to a '
                                'packed latent store.')
    p.add_argument('--features-dir', required=True)
    p.add_argument('--labels-dir', required=True)
    p.add_argument('--out', required=True, help='output store folder')
    p.add_argument('--dtype', choices=['float16', 'bfloat16', 'float32'], default='float16',
                   help='stored precision (default: float16, half the disk of fast-DiT\'s '
                   'float32 files; float32 keeps them bit for bit)')
    p.add_argument('--shard-size', type=int, default=4096)
    p.add_argument('--scale-factor', type=float, default=0.18215,
                   help='scale fast-DiT applied (recorded in the index)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        pairs = list_npy_pairs(args.features_dir, args.labels_dir)
        shape = load_fastdit_item(*pairs[0], 0)[0].shape
        writer = LatentStoreWriter(
            args.out, len(pairs), shape, dtype=args.dtype, content='samples',
            num_copies=1, scale_factor=args.scale_factor, shard_size=args.shard_size,
            vae=f'fast-DiT features {args.features_dir}')
    except (OSError, ValueError) as e:  # OSError: a missing folder, --out into a file
        raise UserError(str(e))
    pending = writer.pending_shards()
    with tqdm(total=sum(len(range(*writer.shard_range(k))) for k in pending),
              unit='item') as pbar:
        for k in pending:
            latents, labels = [], []
            for i in range(*writer.shard_range(k)):
                try:
                    x, y = load_fastdit_item(*pairs[i], i)
                except ValueError as e:
                    raise UserError(str(e))
                if x.shape != shape:
                    raise UserError(f'{pairs[i][0]!r} (item {i}) has shape {x.shape}, '
                                    f'item 0 has {shape}')
                latents.append(x)
                labels.append(y)
                pbar.update(1)
            writer.write_shard(k, np.stack(latents)[:, None, None], labels)
    index = writer.finalize()
    print(f'{PROG}: {index["num_items"]} latents in {len(index["shards"])} shards at '
          f'{args.out} ({len(pending)} written in this run)')
    return index


if __name__ == '__main__':
    sys.exit(run_cli(main))
