"""tools/benchmark_loader.py times both layouts over the same items."""
import json
import os

import numpy as np
import pytest
import torch

from mmsora.utils.cli import UserError
from tools import benchmark_loader


class RecordingLoader(benchmark_loader.DataLoader):
    """The tool's DataLoader, keeping every pass's batches (one list per ``iter``)."""
    passes = []

    def __iter__(self):
        batches = []
        RecordingLoader.passes.append((type(self.dataset).__name__, batches))
        for batch in super().__iter__():
            batches.append(batch)
            yield batch


def test_both_layouts_deliver_every_item(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmark_loader, 'DataLoader', RecordingLoader)
    monkeypatch.setattr(RecordingLoader, 'passes', [])
    results = benchmark_loader.main(
        ['--num-samples', '48', '--batch-size', '16', '--workers', '0', '--epochs', '2',
         '--repeats', '1', '--latent-shape', '4', '8', '8', '--data', str(tmp_path)])
    assert [(r['layout'], r['workers']) for r in results] == [('packed', 0), ('npy', 0)]
    assert all(r['samples'] == 96 and r['samples_per_s'] > 0 for r in results)
    assert len(list((tmp_path / 'features').iterdir())) == 48
    assert (tmp_path / 'packed' / 'index.json').is_file()
    assert 'packed (samples/s)' in capsys.readouterr().out

    # every timed pass delivers each written item once (the packed store holds float16)
    items = {}
    for i in range(48):
        x = np.load(tmp_path / 'features' / f'{i}.npy')[0]
        y = int(np.load(tmp_path / 'labels' / f'{i}.npy')[0])
        items[torch.from_numpy(x).half().numpy().tobytes()] = (i, y)
    assert len(items) == 48
    layouts = [name for name, _ in RecordingLoader.passes]
    # per layout: the untimed warm-up pass, then --epochs timed passes
    assert layouts == ['PackedLatentDataset'] * 3 + ['NpyLatentDataset'] * 3
    timed = [batches for k, (_, batches) in enumerate(RecordingLoader.passes)
             if k % 3 != 0]
    for batches in timed:
        seen = []
        for batch in batches:
            for x, y in zip(batch['latents'], batch['labels']):
                index, label = items[x.half().numpy().tobytes()]
                assert int(y) == label
                seen.append(index)
        assert sorted(seen) == list(range(48))


def test_refuses_fewer_samples_than_one_batch():
    with pytest.raises(UserError, match='below one batch'):
        benchmark_loader.main(['--num-samples', '8', '--batch-size', '16'])


@pytest.mark.parametrize('args, message', [
    (['--latent-shape', '4', '0', '32'], '--latent-shape 4 0 32: each size must be >= 1'),
    (['--workers', '0', '-1'], '--workers 0 -1: a count of loader processes, >= 0'),
    (['--epochs', '0'], '--epochs must be >= 1, got 0'),
    (['--batch-size', '0'], '--batch-size must be >= 1, got 0'),
])
def test_sizes_and_counts_are_checked_before_any_data_is_written(tmp_path, args, message):
    """--latent-shape 0 wrote a store of empty latents and timed it; --workers -1
    failed in torch's DataLoader after the data was written."""
    with pytest.raises(UserError, match=message):
        benchmark_loader.main(args + ['--data', str(tmp_path / 'data')])
    assert not (tmp_path / 'data').exists()


def test_a_folder_of_other_files_is_refused_as_data(tmp_path):
    """--data pointed at a latent store of one's own wrote features/, labels/ and
    packed/ beside its index.json."""
    (tmp_path / 'store').mkdir()
    (tmp_path / 'store' / 'index.json').write_text('{}')
    with pytest.raises(UserError, match=r'--data \S+store holds other files \(index.json\): '
                                        "it is the benchmark's own folder"):
        benchmark_loader.main(['--data', str(tmp_path / 'store')])
    assert os.listdir(tmp_path / 'store') == ['index.json']


def test_an_earlier_runs_data_is_reused_only_when_it_is_what_was_asked(tmp_path):
    """--data keeps what a run wrote for the next; one asking for other sizes was timed
    on the old data under a header with the new ones. Refused, naming both."""
    data = tmp_path / 'data'
    run = ['--batch-size', '16', '--workers', '0', '--epochs', '1', '--repeats', '1',
           '--data', str(data)]
    asked = ['--num-samples', '32', '--latent-shape', '4', '8', '8']
    benchmark_loader.main(run + asked)
    written = {p: p.stat().st_mtime_ns for p in data.rglob('*') if p.is_file()}
    for other, message in [
            (['--num-samples', '48'], 'its features/ already holds 32 samples of 4x8x8, '
             'not the 48 of 4x8x8 asked'),
            (['--latent-shape', '4', '4', '4'], 'its features/ already holds 32 samples of '
             r'4x8x8, not the 32 of 4x4x4 asked \(--num-samples, --latent-shape\): give '
             'those, or another --data folder'),
            (['--dtype', 'float32'], 'its packed/ already holds 32 samples of 4x8x8 in '
             'float16, not the 32 of 4x8x8 in float32 asked')]:
        with pytest.raises(UserError, match=f'--data {data}: {message}'):
            benchmark_loader.main(run + asked + other)
    # the same sizes again: the data is reused as it is
    results = benchmark_loader.main(run + asked)
    assert all(r['samples'] == 32 for r in results)
    assert {p: p.stat().st_mtime_ns for p in data.rglob('*') if p.is_file()} == written
    # the packed store alone is checked too
    for path in (data / 'features').iterdir():
        path.unlink()
    (data / 'features').rmdir()
    with pytest.raises(UserError, match='its packed/ already holds 32 samples of 4x8x8 in '
                                        'float16, not the 48 of 4x8x8 in float16 asked'):
        benchmark_loader.main(run + ['--num-samples', '48', '--latent-shape', '4', '8', '8'])


def test_json_goes_into_a_new_folder_and_a_bad_one_is_refused_first(tmp_path):
    run = ['--num-samples', '16', '--batch-size', '16', '--workers', '0', '--epochs', '1',
           '--repeats', '1', '--latent-shape', '4', '8', '8']
    out = tmp_path / 'new' / 'results' / 'loader.json'
    results = benchmark_loader.main(run + ['--data', str(tmp_path / 'data'),
                                           '--json', str(out)])
    assert json.loads(out.read_text())['results'] == results
    # a path through a file, a folder as the file: refused before any data is written
    for json_path, message in [(out / 'x.json', f'{out} is a file, not a folder'),
                               (tmp_path, 'is a folder; give a file name')]:
        with pytest.raises(UserError, match=message):
            benchmark_loader.main(run + ['--data', str(tmp_path / 'unused'),
                                         '--json', str(json_path)])
    with pytest.raises(UserError, match=f'--data {out}/d: {out} is a file, not a folder'):
        benchmark_loader.main(run + ['--data', str(out / 'd')])
    assert not (tmp_path / 'unused').exists()


def test_a_store_of_ones_own_is_timed_read_only(tmp_path, capsys):
    """--store times a packed store the user made (the benchmark wrote only its own
    generated data, and refused a folder of other files), text embeddings included,
    with the bytes an item holds; nothing in the store changes."""
    from mmsora.datasets import LatentStoreWriter
    root = str(tmp_path / 'store')
    rng = np.random.default_rng(0)
    writer = LatentStoreWriter(root, 40, (4, 8, 8), dtype='float16', shard_size=16,
                               text_shape=(6, 16))
    for k, (a, b) in enumerate(((0, 16), (16, 32), (32, 40))):
        moments = rng.standard_normal((b - a, 1, 2, 4, 8, 8)).astype(np.float32)
        text = dict(text_embeds=torch.randn(b - a, 6, 16).half(),
                    text_mask=torch.ones(b - a, 6, dtype=torch.bool))
        writer.write_shard(k, moments, [0] * (b - a), text=text)
    writer.finalize()
    before = {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in os.listdir(root)}
    results = benchmark_loader.main(['--store', root, '--num-samples', '32', '--batch-size',
                                     '8', '--workers', '0', '1', '--epochs', '1', '--repeats',
                                     '2', '--json', str(tmp_path / 'r.json')])
    # as training reads them: the latents (4x8x8) in float32, the text embeddings (6x16)
    # in the store's float16, the mask's 6 bools
    assert [r['workers'] for r in results] == [0, 1]
    assert all(r['samples'] == 32 and r['item_bytes'] == 4 * 8 * 8 * 4 + 6 * 16 * 2 + 6
               for r in results), results
    out = capsys.readouterr().out
    assert f'store={root} items=40 timed=32 (latents, text_embeds, text_mask; 0.001 MB an ' \
        'item)' in out
    assert json.load(open(tmp_path / 'r.json'))['results'][1]['mb_per_s'] > 0
    assert {f: os.stat(os.path.join(root, f)).st_mtime_ns for f in os.listdir(root)} == before
    with pytest.raises(UserError, match='--store and --data exclude each other'):
        benchmark_loader.main(['--store', root, '--data', str(tmp_path / 'd')])
    with pytest.raises(UserError, match=rf'^--store {tmp_path}: '):
        benchmark_loader.main(['--store', str(tmp_path)])
