"""tools/convert_fastdit_features.py: NaN / inf feature files are refused naming them,
and a refused run leaves no empty --out behind (a begun store it keeps, resumable)."""
import os

import numpy as np
import pytest
import torch

from mmsora.datasets import NpyLatentDataset, PackedLatentDataset
from mmsora.utils.cli import UserError
from tests.extract_tools import run_convert, shard_mtimes


def spoil(features, i, value=np.nan):
    path = features[0] / f'{i}.npy'
    x = np.load(path)
    good = x.copy()
    x[0, 1, 2, 3] = value
    np.save(path, x)
    return lambda: np.save(path, good)


@pytest.mark.parametrize('value', [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(fastdit_features, tmp_path, value):
    """A feature file holding NaN or inf was converted (exit 0) and training then
    logged 'loss nan' naming nothing."""
    spoil(fastdit_features, 2, value)
    with pytest.raises(UserError, match=rf"^'{fastdit_features[0] / '2.npy'}' \(item 2\) holds "
                                        r'NaN or inf \(1 of 64 values\): extract that image '
                                        r'again'):
        run_convert(fastdit_features, tmp_path / 'out')


def test_a_refusal_before_the_first_shard_leaves_no_folder(fastdit_features, tmp_path):
    """A run refused at a bad file left an empty --out behind (the writer had made it)."""
    fix = spoil(fastdit_features, 2)
    out = tmp_path / 'new' / 'deeper' / 'store'
    with pytest.raises(UserError, match=r'holds NaN or inf \(1 of 64 values\): .*files out '
                                        r'\(training on it logs loss nan\)$'):
        run_convert(fastdit_features, out)
    assert not (tmp_path / 'new').exists()  # the folders it made, parents too
    # a wrong shape too
    fix()
    np.save(fastdit_features[0] / '3.npy', np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(UserError, match=r"'.*3.npy' \(item 3\) has shape"):
        run_convert(fastdit_features, tmp_path / 'other')
    assert not (tmp_path / 'other').exists()
    # a folder that was there stays, as it was
    (tmp_path / 'given').mkdir()
    with pytest.raises(UserError):
        run_convert(fastdit_features, tmp_path / 'given')
    assert os.listdir(tmp_path / 'given') == []


def test_a_refusal_keeps_finished_shards_and_a_rerun_resumes(fastdit_features, tmp_path):
    fix = spoil(fastdit_features, 6)  # shard 1 (items 4-7)
    out = tmp_path / 'store'
    with pytest.raises(UserError, match=rf"^'.*6.npy' \(item 6\) holds NaN .*; {out} keeps "
                                        r'the 1 shard finished before it: rerun once the '
                                        r'file is fixed to resume, or convert into a new '
                                        r'--out$'):
        run_convert(fastdit_features, out)
    before = shard_mtimes(str(out))
    assert sorted(os.path.basename(p) for p in before) == ['labels_00000.npy',
                                                          'shard_00000.npy']
    fix()
    index = run_convert(fastdit_features, out)
    assert index['complete'] and index['num_items'] == 11
    assert {p: t for p, t in shard_mtimes(str(out)).items() if p in before} == before
    src = NpyLatentDataset(*map(str, fastdit_features))
    dst = PackedLatentDataset(str(out), seed=0)
    for i in range(11):
        assert torch.equal(src[i]['latents'], dst[i]['latents'])


def test_values_past_float16_are_one_line(fastdit_features, tmp_path):
    """A finite feature past float16's range is inf in a --dtype float16 store: refused
    naming its file (a ValueError traceback from the tool before, then the writer's
    'shard 0: item 2')."""
    spoil(fastdit_features, 2, 1e5)
    with pytest.raises(UserError, match=rf"^'{fastdit_features[0] / '2.npy'}' \(item 2\) "
                                        r"holds values past float16's range \(1 of 64 "
                                        r"values"):
        run_convert(fastdit_features, tmp_path / 'out', dtype='float16')
