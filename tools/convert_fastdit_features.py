"""Convert fast-DiT per-file features (``N.npy`` latents + labels) to a packed store.

fast-DiT's latents are already scaled posterior samples of randomly flipped images, so
the store holds ``content='samples'`` with one copy. Resumable like the extractor: a
run stopped (Ctrl-C, or a bad feature file, refused naming it) keeps the shards it
finished, and rerunning the same command continues after them; a run refused before
its first shard removes the --out folders it made. An --out folder of other files and no
store (the features folder itself, photos, a work dir) is refused; an empty one is taken.
One run writes an --out at a time (the lock tools/extract_features.py takes,
``OUT/.extract.lock``): a second one is refused naming the process that holds it, and a
lock left by a run that stopped (its process gone) is taken over.

Example::

    python tools/convert_fastdit_features.py \\
        --features-dir features/imagenet256_features \\
        --labels-dir features/imagenet256_labels --out data/imagenet256_packed
"""
import json
import os.path as osp
import sys

import numpy as np
from tqdm import tqdm

from mmsora.datasets import LatentStoreWriter, list_npy_pairs
from mmsora.datasets.npy_latent_dataset import load_fastdit_item
from mmsora.datasets.shard_files import say_damaged
from mmsora.datasets.store_folder import foreign_folder_message
from mmsora.datasets.store_format import nonfinite_items
from mmsora.datasets.store_lock import StoreLock
from mmsora.utils.cli import ArgumentParser, UserError, check_output_path, plural, run_cli

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


def load_item(pairs, i, shape, dtype):
    """Item ``i`` as ``(latent, label)``, refusing an unreadable file, a shape other than
    item 0's, and NaN or inf values as stored in ``dtype`` (the store's rule).

    Before, a feature file holding NaN or inf was converted (exit 0) and training then
    logged 'loss nan' naming no file; one with values past --dtype float16's range
    passed here and the store's writer refused its shard naming a row of it."""
    try:
        x, y = load_fastdit_item(*pairs[i], i)
    except ValueError as e:
        raise UserError(str(e))
    if x.shape != shape:
        raise UserError(f'{pairs[i][0]!r} (item {i}) has shape {x.shape}, item 0 has '
                        f'{shape}')
    bad = x.size - int(np.isfinite(x).sum())
    if bad:
        raise UserError(f'{pairs[i][0]!r} (item {i}) holds NaN or inf ({bad} of {x.size} '
                        'values): extract that image again, or leave its feature and label '
                        'files out (training on it logs loss nan)')
    found = nonfinite_items(dict(latents=x[None]), dtype)
    if found:  # finite as read: past the stored dtype's range (float16: 65504)
        raise UserError(f'{pairs[i][0]!r} (item {i}) holds values past {dtype}\'s range '
                        f'({found[0][1]} of {x.size} values, largest {np.abs(x).max():g}): '
                        'convert with --dtype bfloat16 or float32, or leave its feature and '
                        'label files out')
    return x, y


def check_out_folder(out: str) -> None:
    """Refuse an ``--out`` folder that holds other files and no latent store, as
    tools/extract_features.py does, in its words. Before, the shards and index.json
    were written among them without a word (into --features-dir itself, given as
    --out, beside its N.npy files). An empty folder, or one holding a store's files
    (begun or finished), is taken."""
    refused = foreign_folder_message(out)
    if refused:
        raise UserError(refused)


def what_is_kept(writer):
    """After a refusal: what is left at --out, said after the refusal: the shards this
    run finished (none: nothing; the lock's release removes the folders this run made
    for --out, left empty). Before, a refusal at the first file left an empty --out,
    and one later on a store with no word of it. Finished shards are kept: they are
    listed in the store's index part, so a rerun resumes after them (the writer's
    resume rule)."""
    if not writer.own:
        return ''
    n = len(writer.own)
    return (f'; {writer.root} keeps the {n} shard{"s" * (n != 1)} finished before it: '
            'rerun once the file is fixed to resume, or convert into a new --out')


def finished_before(writer) -> bool:
    """Whether an earlier run finished the store: its index.json says complete and no
    shard is pending (none found cut short since). Before, a rerun drew two empty
    progress bars and said '0 written in this run'."""
    path = osp.join(writer.root, 'index.json')
    if not osp.isfile(path):
        return False
    try:
        with open(path) as f:
            complete = json.load(f).get('complete')
    except (OSError, ValueError):
        return False  # (the writer's finalize writes it again)
    return bool(complete) and not writer.pending_shards()


def convert(args, pairs, shape, writer):
    """Write the pending shards; returns how many were written."""
    pending = writer.pending_shards()
    say_damaged(PROG, writer.damaged, doing='writing')  # (a rerun: found cut short)
    with tqdm(total=sum(len(range(*writer.shard_range(k))) for k in pending),
              unit='item') as pbar:
        for k in pending:
            latents, labels = [], []
            for i in range(*writer.shard_range(k)):
                x, y = load_item(pairs, i, shape, args.dtype)
                latents.append(x)
                labels.append(y)
                pbar.update(1)
            try:  # (its refusals in one line; NaN / inf as stored: refused by load_item,
                # each item scanned there: the writer need not scan the shard again)
                writer.write_shard(k, np.stack(latents)[:, None, None], labels,
                                   finite_checked=True)
            except ValueError as e:
                raise UserError(str(e)) from None
    return len(pending)


def main(argv=None):
    args = parse_args(argv)
    check_out_folder(args.out)
    try:
        pairs = list_npy_pairs(args.features_dir, args.labels_dir)
        shape = load_fastdit_item(*pairs[0], 0)[0].shape
    except (OSError, ValueError) as e:  # OSError: a missing folder
        raise UserError(str(e))
    check_output_path(args.out, '--out', folder=True)  # (else a bare '[Errno 13]')
    lock = StoreLock(args.out)
    try:
        refused = lock.take()
        if refused:
            raise UserError(refused)
        return write_store(args, pairs, shape)
    finally:  # (and the folders made for it, where still empty: a refusal's, a failure's)
        lock.release()


def write_store(args, pairs, shape):
    """Write (or finish) the store at ``--out``, holding its lock; returns its index."""
    try:
        writer = LatentStoreWriter(
            args.out, len(pairs), shape, dtype=args.dtype, content='samples',
            num_copies=1, scale_factor=args.scale_factor, shard_size=args.shard_size,
            vae=f'fast-DiT features {args.features_dir}')
    except (OSError, ValueError) as e:  # (another store's settings: one line)
        raise UserError(str(e))
    if finished_before(writer):  # (said as extract_features.py says it)
        index = writer.finalize()
        print(f'{PROG}: {args.out} is complete ({plural(index["num_items"], "item")} in '
              f'{plural(len(index["shards"]), "shard")}): nothing to do')
        return index
    try:
        written = convert(args, pairs, shape, writer)
    except UserError as e:
        raise UserError(f'{e}{what_is_kept(writer)}') from None
    index = writer.finalize()
    print(f'{PROG}: {plural(index["num_items"], "latent")} in '
          f'{plural(len(index["shards"]), "shard")} at {args.out} ({written} written in '
          'this run)')
    return index


if __name__ == '__main__':
    sys.exit(run_cli(main))
