"""Time the training data path alone: the packed, memory-mapped latent store against
fast-DiT's one-``.npy``-file-per-sample layout, on the same machine, interleaved.

    python tools/benchmark_loader.py [--num-samples 8192] [--workers 0 2 4] \
        [--batch-size 256] [--epochs 2] [--repeats 3] [--data DIR] [--json FILE]

Without ``--data`` it writes random latents (4x32x32, i.e. 256 px images) in both
layouts into a temporary folder first: ``features/N.npy`` + ``labels/N.npy`` as
fast-DiT's ``extract_features.py`` writes them (float32, read by
:class:`NpyLatentDataset`), and the same items converted by
``tools/convert_fastdit_features.py`` into a packed store (read by
:class:`PackedLatentDataset`, float16 shards by default). Each measurement iterates a
shuffled ``DataLoader`` over every item ``--epochs`` times (after one untimed warm-up
batch) and reports samples/s; the two layouts take turns for each worker count, and
the best of ``--repeats`` runs is kept. Both read from the page cache once written, so
this measures the loader's CPU cost, not the disk.

``--store DIR`` times a packed store of one's own instead (read only, nothing
written): ``--num-samples`` items drawn from it (seeded), read as training reads them
(:class:`PackedLatentDataset`: a posterior sample per item, text embeddings where the
store holds them), at each ``--workers`` count, with the bytes of an item as the
loader hands it on (latents in float32, text embeddings in the store's dtype) and
MB/s of those: whether the loader keeps up with the training step (T5-XXL embeddings
of 120 tokens are about 1 MB an item in float16). A first pass reads from the disk;
later ones from the page cache where the items fit in memory. ``--latent-shape`` and ``--dtype`` are
the generated data's and do not apply.
"""
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmsora.datasets import NpyLatentDataset, PackedLatentDataset, list_npy_pairs
from mmsora.datasets.npy_latent_dataset import load_fastdit_item
from mmsora.utils.cli import ArgumentParser, UserError, check_at_least, check_output_path, run_cli

LAYOUTS = ('packed', 'npy')


def parse_args(argv=None):
    parser = ArgumentParser(description='Benchmark latent data loaders')
    parser.add_argument('--num-samples', type=int, default=8192)
    parser.add_argument('--latent-shape', type=int, nargs=3, default=[4, 32, 32],
                        metavar=('C', 'H', 'W'))
    parser.add_argument('--dtype', choices=['float16', 'bfloat16', 'float32'],
                        default='float16', help='dtype of the packed store')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2, 4])
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--data', metavar='DIR',
                        help='folder holding features/, labels/ and packed/: written there '
                        'if missing; what an earlier run wrote is reused when it holds '
                        'the --num-samples, --latent-shape and --dtype asked, and refused '
                        'otherwise (nothing there is overwritten); default: a temporary '
                        'folder')
    parser.add_argument('--store', metavar='DIR',
                        help='time this packed latent store (extract_features.py\'s '
                        'output) alone, read only: --num-samples items of it')
    parser.add_argument('--json', metavar='FILE', help='write the results here (its folder '
                        'is made if missing)')
    return parser.parse_args(argv)


def check_data(root, num_samples, shape, dtype) -> None:
    """Refuse a ``--data`` folder whose features/ or packed/ (an earlier run's) hold
    another number of samples, latent shape or packed dtype than asked: they would be
    timed under the header's new sizes."""
    feats, labels, packed = (osp.join(root, d) for d in ('features', 'labels', 'packed'))
    found = []  # (folder, samples, latent shape, dtype of the packed store)
    if osp.isdir(feats):
        names = [n for n in os.listdir(feats) if n.endswith('.npy')]
        there = (load_fastdit_item(*list_npy_pairs(feats, labels)[0], 0)[0].shape
                 if names else tuple(shape))
        found.append(('features', len(names), tuple(there), None))
    index = osp.join(packed, 'index.json')
    if osp.isfile(index):
        with open(index) as f:
            header = json.load(f)
        found.append(('packed', header.get('num_source_items'),
                      tuple(header.get('latent_shape') or ()), header.get('dtype')))
    for folder, n, there, stored in found:
        if (n, there, stored or dtype) == (num_samples, tuple(shape), dtype):
            continue
        options = '--num-samples, --latent-shape' + (', --dtype' if stored else '')
        in_dtype = f' in {stored}' if stored else ''
        asked = f' in {dtype}' if stored else ''
        raise UserError(
            f'--data {root}: its {folder}/ already holds {n} samples of '
            f'{"x".join(map(str, there))}{in_dtype}, not the {num_samples} of '
            f'{"x".join(map(str, shape))}{asked} asked ({options}): give those, or '
            'another --data folder')


def write_layouts(root, num_samples, shape, dtype):
    """fast-DiT's per-file layout and the packed store of the same random items."""
    check_data(root, num_samples, shape, dtype)
    feats, labels, packed = (osp.join(root, d) for d in ('features', 'labels', 'packed'))
    if not osp.isdir(feats):
        os.makedirs(feats)
        os.makedirs(labels)
        rng = np.random.default_rng(0)
        for i in range(num_samples):
            np.save(osp.join(feats, f'{i}.npy'),
                    rng.standard_normal((1, *shape), dtype=np.float32))
            np.save(osp.join(labels, f'{i}.npy'), rng.integers(0, 1000, (1,)))
    if not osp.isfile(osp.join(packed, 'index.json')):
        # the converter runs as a user runs it: a script beside this one
        converter = osp.join(osp.dirname(osp.abspath(__file__)),
                             'convert_fastdit_features.py')
        done = subprocess.run([sys.executable, converter, '--features-dir', feats,
                               '--labels-dir', labels, '--out', packed, '--dtype', dtype])
        if done.returncode:
            raise UserError(f'{osp.basename(converter)} exited {done.returncode} '
                            f'writing the packed store at {packed}')
    return feats, labels, packed


def build(layout, feats, labels, packed):
    if layout == 'npy':
        return NpyLatentDataset(feats, labels)
    return PackedLatentDataset(packed, seed=0)


def time_loader(dataset, workers, batch_size, epochs) -> dict:
    """Samples/s of a shuffled DataLoader over ``epochs`` passes of ``dataset``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(0))
    next(iter(loader))  # start the workers, open the files
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            n += len(batch['labels'])
    elapsed = time.perf_counter() - start
    return dict(samples=n, seconds=elapsed, samples_per_s=n / elapsed)


def item_bytes(item) -> int:
    """Bytes of the tensors of one dataset item."""
    return sum(v.numel() * v.element_size() for v in item.values() if torch.is_tensor(v))


def time_store(args) -> list:
    """``--store``: samples/s and MB/s of ``--num-samples`` items of the store, at each
    worker count, the best of ``--repeats``; nothing is written."""
    from torch.utils.data import Subset
    try:
        dataset = PackedLatentDataset(args.store, seed=0)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f'--store {args.store}: {e}') from None
    n = min(args.num_samples, len(dataset))
    if n < args.batch_size:
        raise UserError(f'--store {args.store}: {n} items, below one batch ({args.batch_size})')
    picked = np.random.default_rng(0).choice(len(dataset), n, replace=False).tolist()
    first = dataset[picked[0]]
    size = item_bytes(first)
    results = []
    for workers in args.workers:
        runs = [time_loader(Subset(dataset, picked), workers, args.batch_size, args.epochs)
                for _ in range(args.repeats)]
        best = max(runs, key=lambda r: r['samples_per_s'])
        results.append(dict(layout='store', workers=workers, item_bytes=size,
                            mb_per_s=best['samples_per_s'] * size / 1e6, **best,
                            all_samples_per_s=[round(r['samples_per_s']) for r in runs]))
    fields = ', '.join(sorted(k for k, v in first.items() if torch.is_tensor(v)))
    print(f'store={args.store} items={len(dataset)} timed={n} ({fields}; '
          f'{size / 1e6:.3f} MB an item) batch_size={args.batch_size} epochs={args.epochs} '
          f'repeats={args.repeats} cpus={os.cpu_count()}')
    print(f'{"workers":>7}  {"samples/s":>10}  {"MB/s":>8}  runs')
    for r in results:
        print(f'{r["workers"]:>7}  {r["samples_per_s"]:>10.0f}  {r["mb_per_s"]:>8.1f}  '
              f'{r["all_samples_per_s"]}')
    return results


def write_json(path, args, results) -> None:
    if path:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        with open(path, 'w') as f:
            json.dump(dict(setup=vars(args), results=results), f, indent=2)


def main(argv=None):
    args = parse_args(argv)
    check_at_least(args, ('num_samples', 'batch_size', 'epochs', 'repeats'))
    if min(args.latent_shape) < 1:
        raise UserError(f'--latent-shape {" ".join(map(str, args.latent_shape))}: each size '
                        'must be >= 1')
    if min(args.workers) < 0:
        raise UserError(f'--workers {" ".join(map(str, args.workers))}: a count of loader '
                        'processes, >= 0 (0: load in the main process)')
    check_output_path(args.json, '--json')  # before the work, not after it
    if args.store:
        if args.data:
            raise UserError('--store and --data exclude each other: --store times a store '
                            'of yours, read only; --data is the benchmark\'s own folder')
        results = time_store(args)
        write_json(args.json, args, results)
        return results
    if args.num_samples < args.batch_size:
        raise UserError(f'--num-samples {args.num_samples} is below one batch '
                        f'({args.batch_size})')
    check_output_path(args.data, '--data', folder=True)
    if args.data and osp.isdir(args.data):  # (it wrote its three folders beside them)
        other = sorted(set(os.listdir(args.data)) - {'features', 'labels', 'packed'})
        if other:
            raise UserError(f'--data {args.data} holds other files ({", ".join(other[:3])}'
                            f'{", ..." if len(other) > 3 else ""}): it is the benchmark\'s '
                            'own folder for the data it generates; give a new or empty one')
    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix='mmsora_loader_')
        root = tmp.name
    paths = write_layouts(root, args.num_samples, args.latent_shape, args.dtype)
    results = []
    for workers in args.workers:
        runs = {layout: [] for layout in LAYOUTS}
        for _ in range(args.repeats):
            for layout in LAYOUTS:  # alternate, so machine load hits both alike
                runs[layout].append(time_loader(build(layout, *paths), workers,
                                                args.batch_size, args.epochs))
        for layout in LAYOUTS:
            best = max(runs[layout], key=lambda r: r['samples_per_s'])
            results.append(dict(layout=layout, workers=workers, **best,
                                all_samples_per_s=[round(r['samples_per_s'])
                                                   for r in runs[layout]]))
    print(f'num_samples={args.num_samples} latent_shape={tuple(args.latent_shape)} '
          f'packed_dtype={args.dtype} batch_size={args.batch_size} '
          f'epochs={args.epochs} repeats={args.repeats} cpus={os.cpu_count()}')
    print(f'{"workers":>7}  {"packed (samples/s)":>18}  {"npy (samples/s)":>15}  '
          f'{"ratio":>5}  runs packed / npy')
    for packed, npy in zip(results[::2], results[1::2]):
        print(f'{packed["workers"]:>7}  {packed["samples_per_s"]:>18.0f}  '
              f'{npy["samples_per_s"]:>15.0f}  '
              f'{packed["samples_per_s"] / npy["samples_per_s"]:>5.2f}  '
              f'{packed["all_samples_per_s"]} / {npy["all_samples_per_s"]}')
    write_json(args.json, args, results)
    if tmp is not None:
        tmp.cleanup()
    return results


if __name__ == '__main__':
    sys.exit(run_cli(main))
