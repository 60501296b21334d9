"""tools/convert_fastdit_features.py's last line counts in words as extract_features.py
does: '1 latent in 1 shard', not '... in 1 shards' (walk-through ai)."""
from tests.extract_tools import convert, write_fastdit_features


def test_the_summary_says_one_shard_and_one_latent(tmp_path, capsys):
    for count, said in [(4, '4 latents in 1 shard at'), (1, '1 latent in 1 shard at')]:
        (tmp_path / str(count)).mkdir()
        feats, labels = write_fastdit_features(tmp_path / str(count), count=count)
        out = str(tmp_path / str(count) / 'packed')
        convert.main(['--features-dir', str(feats), '--labels-dir', str(labels),
                      '--out', out])
        assert (f'convert_fastdit_features.py: {said} {out} (1 written in this run)\n'
                in capsys.readouterr().out)
