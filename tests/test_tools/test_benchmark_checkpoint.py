"""tools/benchmark_checkpoint.py: both writers save the same checkpoint in fresh
processes (mmengine's holds a copy of it in memory while saving, ours does not); the
weights load from it mapped and read."""
import json

import pytest

from mmsora.utils.cli import UserError
from tools import benchmark_checkpoint


def test_saves_and_loads_in_fresh_processes(tmp_path, capsys):
    out_json = tmp_path / 'new' / 'results' / 'r.json'  # its folder is made
    result = benchmark_checkpoint.main(
        ['--model', 'DiT-S/8', '--depth', '1', '--out', str(tmp_path / 'out'),
         '--json', str(out_json)])
    ours, mmengine = result['saves']
    assert (ours['writer'], mmengine['writer']) == ('ours', 'mmengine')
    for r in result['saves']:  # weights, EMA and two moments of ~3.6M float32 parameters
        assert 50 < r['tensor_mb'] <= r['file_mb'] < r['tensor_mb'] * 1.01, r
        assert r['save_s'] > 0
    assert mmengine['extra_mb'] > 0.9 * mmengine['file_mb'], mmengine
    assert ours['extra_mb'] < 0.1 * ours['file_mb'], ours
    mapped, read = result['loads']
    assert (mapped['reader'], read['reader']) == ('mapped', 'read')
    # read whole, the file's four parts pass through memory; mapped, the weights' part
    assert read['extra_mb'] > 0.9 * ours['file_mb'], read
    assert mapped['extra_mb'] < 0.5 * ours['file_mb'], mapped
    assert list((tmp_path / 'out').iterdir()) == []  # the runs remove their file
    assert json.loads(out_json.read_text()) == result
    assert 'extra / file' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark_checkpoint.parse_args(['--model', 'DiT-Q/2'])
    with pytest.raises(SystemExit):
        benchmark_checkpoint.parse_args(['--writers', '--readers'])
    # an output it could not write is refused before the runs
    for path, message in [(out_json / 'x.json', f'{out_json} is a file, not a folder'),
                          (tmp_path, 'is a folder; give a file name')]:
        with pytest.raises(UserError, match=message):
            benchmark_checkpoint.parse_args(['--json', str(path)])
