"""tools/benchmark_checkpoint.py: both writers save the same checkpoint in fresh
processes; mmengine's holds a copy of it in memory while saving, ours does not."""
import json

import pytest

from tools import benchmark_checkpoint


def test_mmengine_holds_a_copy_ours_streams(tmp_path, capsys):
    results = benchmark_checkpoint.main(
        ['--model', 'DiT-S/8', '--depth', '1', '--out', str(tmp_path / 'out'),
         '--json', str(tmp_path / 'r.json')])
    ours, mmengine = results
    assert (ours['writer'], mmengine['writer']) == ('ours', 'mmengine')
    for r in results:  # weights, EMA and two moments of ~3.6M float32 parameters
        assert 50 < r['tensor_mb'] <= r['file_mb'] < r['tensor_mb'] * 1.01, r
        assert r['save_s'] > 0
    assert mmengine['extra_mb'] > 0.9 * mmengine['file_mb'], mmengine
    assert ours['extra_mb'] < 0.1 * ours['file_mb'], ours
    assert list((tmp_path / 'out').iterdir()) == []  # each run removes its file
    assert json.loads((tmp_path / 'r.json').read_text())['results'] == results
    assert 'extra / file' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark_checkpoint.parse_args(['--model', 'DiT-Q/2'])
