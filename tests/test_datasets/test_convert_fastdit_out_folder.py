"""tools/convert_fastdit_features.py: an --out folder of other files and no latent store
is refused as tools/extract_features.py refuses it (the shards and index.json were
written among the files, into --features-dir itself when given as --out); an empty
folder, or a store begun there, is taken."""
import os

import pytest

from mmsora.datasets import PackedLatentDataset
from mmsora.utils.cli import UserError, run_cli
from tests.extract_tools import interrupted, run_convert


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(fastdit_features, tmp_path,
                                                                 capsys):
    photos = tmp_path / 'photos'
    photos.mkdir()
    for name in ('d.jpg', 'a.jpg', 'c.jpg', 'b.jpg', '.DS_Store'):
        (photos / name).write_bytes(b'mine')
    with pytest.raises(UserError) as info:
        run_convert(fastdit_features, photos)
    assert str(info.value) == (f'--out {photos} holds other files (a.jpg, b.jpg, c.jpg, '
                               '...) and no latent store: pick an empty or new folder for '
                               'the store')
    assert sorted(os.listdir(photos)) == ['.DS_Store', 'a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']
    # the features folder itself given as --out (its N.npy files are no store's)
    before = sorted(os.listdir(fastdit_features[0]))
    assert run_cli(lambda: run_convert(fastdit_features, fastdit_features[0])) == 2
    assert capsys.readouterr().err == (f'error: --out {fastdit_features[0]} holds other files '
                                       '(0.npy, 1.npy, 10.npy, ...) and no latent store: pick '
                                       'an empty or new folder for the store\n')
    assert sorted(os.listdir(fastdit_features[0])) == before
    work_dir = tmp_path / 'work_dir'  # fewer than 4 entries: no '...'
    (work_dir / 'vis_data').mkdir(parents=True)
    (work_dir / 'iter_100.pth').write_bytes(b'weights')
    with pytest.raises(UserError, match=r'^--out \S+work_dir holds other files '
                                        r'\(iter_100\.pth, vis_data\) and no latent store: '):
        run_convert(fastdit_features, work_dir)
    assert sorted(os.listdir(work_dir)) == ['iter_100.pth', 'vis_data']


def test_an_empty_folder_and_a_begun_store_are_taken(fastdit_features, tmp_path):
    out = tmp_path / 'latents'
    out.mkdir()
    (out / '.gitkeep').write_text('')
    assert run_convert(fastdit_features, out)['complete']
    assert len(PackedLatentDataset(str(out), seed=0)) == 11
    # a store begun and stopped (its index.json not written yet) resumes
    begun = tmp_path / 'begun'
    interrupted(lambda: run_convert(fastdit_features, begun))
    assert 'index.json' not in os.listdir(begun) and 'shard_00000.npy' in os.listdir(begun)
    assert run_convert(fastdit_features, begun)['num_items'] == 11
