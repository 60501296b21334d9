"""tools/count_traffic.py: bytes of a DiT block's non-matmul operators, per sample."""
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
