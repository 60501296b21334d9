"""tools/extract_features.py: an --out folder of other files (refused, before any model
loads), and a rerun on a manifest or image folder that has more (or fewer) items than
its store was begun from (said in rows, with what to do)."""
import os
import os.path as osp
import shutil
from unittest import mock

import pytest

from mmsora.datasets import PackedLatentDataset, write_manifest
from mmsora.utils.cli import UserError
from tests.extract_tools import extract, run_extract, shard_mtimes
from tests.shared_videos import BIKES, BUNNY, needs_videos

pytestmark = pytest.mark.usefixtures('kept_environ')


def no_models():
    """Patches that fail the test if the VAE or the text encoder is loaded."""
    return (mock.patch.object(extract, 'build_vae', side_effect=AssertionError('VAE loaded')),
            mock.patch.object(extract, 'build_text_encoder',
                              side_effect=AssertionError('text encoder loaded')))


# --------------------------------------------------------------------------- #
#                        1. an --out of other files                            #
# --------------------------------------------------------------------------- #
def test_a_folder_of_other_files_is_refused(image_folder, tiny_vae_dir, tmp_path):
    """Before, the shards and index.json were written among the user's files."""
    photos = tmp_path / 'photos'
    photos.mkdir()
    for name in ('d.jpg', 'a.jpg', 'c.jpg', 'b.jpg', '.DS_Store'):
        (photos / name).write_bytes(b'mine')
    vae, text = no_models()
    with vae, text, pytest.raises(UserError) as info:
        run_extract(image_folder, str(photos), tiny_vae_dir)
    assert str(info.value) == (f'--out {photos} holds other files (a.jpg, b.jpg, c.jpg, '
                               '...) and no latent store: pick an empty or new folder for '
                               'the store')
    assert sorted(os.listdir(photos)) == ['.DS_Store', 'a.jpg', 'b.jpg', 'c.jpg', 'd.jpg']
    checkpoints = tmp_path / 'work_dir'  # fewer than 4 entries: no '...'
    (checkpoints / 'vis_data').mkdir(parents=True)
    (checkpoints / 'iter_100.pth').write_bytes(b'weights')
    with pytest.raises(UserError, match=r'holds other files \(iter_100\.pth, vis_data\) '
                       r'and no latent store: pick'):
        run_extract(image_folder, str(checkpoints), tiny_vae_dir)


def test_empty_folders_and_stores_are_taken(image_folder, tiny_vae_dir, tmp_path):
    """An empty folder (hidden files aside) takes a new store; a store whose index and
    parts are gone but whose shards are there is written again, not refused."""
    out = tmp_path / 'latents'
    out.mkdir()
    (out / '.gitkeep').write_text('')
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    os.remove(out / 'index.json')
    shutil.rmtree(out / 'parts')
    before = shard_mtimes(str(out))
    summary = run_extract(image_folder, str(out), tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 4
    assert shard_mtimes(str(out)).keys() == before.keys()


# --------------------------------------------------------------------------- #
#                 2. more or fewer items than the store's                      #
# --------------------------------------------------------------------------- #
def test_an_image_folder_of_more_pictures_is_said_in_pictures(image_folder, tiny_vae_dir,
                                                               tmp_path):
    """It named num_source_items, a setting no option sets."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    shutil.copy(osp.join(image_folder, 'a', 'a0.png'), osp.join(image_folder, 'a', 'a3.png'))
    vae, text = no_models()
    with vae, text, pytest.raises(UserError) as info:
        run_extract(image_folder, out, tiny_vae_dir)
    assert str(info.value) == (f'--data-path {image_folder} has 8 pictures where the store '
                               f'at {out} was begun from 7: extract it into a new --out')


@needs_videos
def test_a_manifest_grown_by_rows_says_how_to_add_them(tmp_path, tiny_vae_dir):
    """It named num_source_items (a setting users never set) and did not say what to do
    with the rows added: extracting them alone into a new --out and training on both
    stores, as the message says, works."""
    manifest, out = str(tmp_path / 'clips.csv'), str(tmp_path / 'old')
    argv = ['--out', out, '--num-frames', '2', '--size', '16', '--shard-size', '1',
            '--num-workers', '0', '--device', 'cpu', '--vae', tiny_vae_dir]
    bikes, bunny = dict(path=BIKES, label=1), dict(path=BUNNY, label=0)
    write_manifest([bikes, bunny], manifest)
    assert extract.main(['--manifest', manifest, *argv])['complete']
    said = f'--manifest {manifest} has {{}} where the store at {out} was begun from 2'
    for rows, expected in (
            ([bikes, bunny, bunny], said.format('3 rows') + (
                ' (row 3 is new): put it in a manifest of its own, extract that into a new '
                "--out and train on both stores: train_dataloader.dataset.store=['old', "
                "'new'] (docs/video.md)")),
            ([bikes, bunny, bikes, bunny], said.format('4 rows') + ' (rows 3-4 are new): '
             'put them in a manifest of their own, extract that into a new --out and '),
            ([bunny, bikes, bikes], said.format('3 rows') + ', and its first 2 are not '
             'those the store holds (other files, captions or labels, or another order): '
             'extract it into a new --out'),
            ([bikes], said.format('1 row') + ': give it the rows the store was begun '
             'from, or use a new --out')):
        write_manifest(rows, manifest)
        vae, text = no_models()
        with vae, text, pytest.raises(UserError) as info:
            extract.main(['--manifest', manifest, *argv])
        assert str(info.value).startswith(expected)
    new = str(tmp_path / 'new.csv')
    write_manifest([bunny], new)
    argv[1] = str(tmp_path / 'new')
    assert extract.main(['--manifest', new, *argv])['complete']
    both = PackedLatentDataset(str(tmp_path), store=['old', 'new'])
    assert len(both) == 3
