"""tools/benchmark_loader.py times both layouts over the same items."""
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
