"""tools/count_traffic.py: bytes of a DiT block's non-matmul operators, per sample."""
import subprocess
import sys

import pytest

from mmsora.utils.cli import UserError
from tools import count_traffic
from tools.count_traffic import main, traffic_per_sample


def test_traffic_per_sample_is_what_the_operators_move(capsys):
    t, d = 16, 32
    per_sample, calls = traffic_per_sample(d, 2, t)
    # GELU (tanh) on the MLP's bf16 hidden activations (T, 4D): read 2 + write 2 bytes
    assert calls['gelu'] == 1 and per_sample['gelu'] == t * 4 * d * 4
    # its backward reads the gradient and the input, writes the input's gradient
    assert per_sample['gelu_backward'] == t * 4 * d * 6
    # two LayerNorms under autocast run in float32: (T, D) in and out, plus the
    # per-token mean and 1/std they keep for the backward pass
    assert calls['native_layer_norm'] == 2
    assert per_sample['native_layer_norm'] == 2 * (t * d * 8 + t * 8)
    # matrix products and attention are left out
    assert not {'mm', 'addmm', 'bmm'} & set(per_sample)
    main(['--hidden-size', str(d), '--num-heads', '2', '--tokens', str(t), '--depth', '2',
          '--batch-size', '4'])
    out = capsys.readouterr().out
    total = sum(per_sample.values())
    assert f'{total / 2**20:.2f} MiB per sample' in out
    assert f'2 blocks x batch 4: {total * 8 / 2**30:.1f} GiB per step' in out


@pytest.mark.parametrize('options, message', [
    (['--bandwidth', '0'], '--bandwidth must be a finite number of TB/s above 0 '
     r'\(H200: 4.8\), got 0'),
    (['--bandwidth', 'inf'], 'got inf'),
    (['--tokens', '0'], '--tokens must be >= 1, got 0'),
    (['--batch-size', '-1'], '--batch-size must be >= 1, got -1'),
    (['--depth', '0'], '--depth must be >= 1, got 0'),
    (['--num-heads', '0'], '--num-heads must be >= 1, got 0'),
    (['--hidden-size', '100', '--num-heads', '16'],
     '--hidden-size 100 must be a multiple of --num-heads 16')])
def test_bad_arguments_are_refused_before_counting(options, message, monkeypatch):
    monkeypatch.setattr(count_traffic, 'traffic_per_sample',
                        lambda *a: pytest.fail('counted'))
    with pytest.raises(UserError, match=message):
        count_traffic.main(options)


def test_a_bad_argument_is_one_error_line(repo_root):
    result = subprocess.run([sys.executable, 'tools/count_traffic.py', '--bandwidth', '0'],
                            cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == (
        'error: --bandwidth must be a finite number of TB/s above 0 (H200: 4.8), got 0\n')
