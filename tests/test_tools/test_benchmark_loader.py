"""tools/benchmark_loader.py times both layouts over the same items."""
import pytest

from mmsora.utils.cli import UserError
from tools import benchmark_loader


def test_both_layouts_deliver_every_item(tmp_path, capsys):
    results = benchmark_loader.main(
        ['--num-samples', '48', '--batch-size', '16', '--workers', '0', '--epochs', '2',
         '--repeats', '1', '--latent-shape', '4', '8', '8', '--data', str(tmp_path)])
    assert [(r['layout'], r['workers']) for r in results] == [('packed', 0), ('npy', 0)]
    assert all(r['samples'] == 96 and r['samples_per_s'] > 0 for r in results)
    assert len(list((tmp_path / 'features').iterdir())) == 48
    assert (tmp_path / 'packed' / 'index.json').is_file()
    assert 'packed (samples/s)' in capsys.readouterr().out
    with pytest.raises(UserError, match='below one batch'):
        benchmark_loader.main(['--num-samples', '8', '--batch-size', '16'])
