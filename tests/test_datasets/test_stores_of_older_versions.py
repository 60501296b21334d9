"""Latent stores written by an older mmsora, used with this one: a half-done one whose
settings cannot be checked is refused, a finished one still reruns, and the scale their
--vae stores were written with is said."""
import glob
import json
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config

from mmsora.datasets import LatentStoreWriter
from mmsora.datasets.store_checks import check_latent_store
from mmsora.utils.cli import UserError
from tests.extract_tools import (convert, interrupted, run_extract, shard_mtimes,
                                 write_fastdit_features)

pytestmark = pytest.mark.usefixtures('fresh_notes')


def _as_written_before_parts_held_meta(out):
    """Make ``out``'s parts as the Dec 3 mmsora wrote them: with no ``meta``."""
    for path in glob.glob(osp.join(out, 'parts', '*.json')):
        with open(path) as f:
            data = json.load(f)
        del data['meta']
        with open(path, 'w') as f:
            json.dump(data, f)


def test_a_half_done_store_of_an_older_version_is_refused(image_folder, tiny_vae_dir,
                                                            tmp_path):
    """Before, it resumed with no check of the settings (another --image-size here):
    its shards and this run's held latents of two kinds."""
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir))
    _as_written_before_parts_held_meta(out)
    with pytest.raises(UserError) as info:
        run_extract(image_folder, out, tiny_vae_dir, '--flip')
    message = str(info.value)
    assert '\n' not in message
    assert 'begun by an older mmsora' in message and 'rank-00000.json' in message
    assert 'use a new --out (or delete the folder' in message
    assert not osp.exists(osp.join(out, 'index.json'))  # nothing written over


def test_a_finished_store_of_an_older_version_still_reruns(image_folder, tiny_vae_dir,
                                                          tmp_path):
    """Its index.json records the settings of every shard its parts list."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    _as_written_before_parts_held_meta(out)
    summary = run_extract(image_folder, out, tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 0


def _labelled_store(root, classes):
    """A one-shard store of two labelled clips; ``classes`` None: as an older mmsora
    wrote a video store (no class names)."""
    meta = dict(num_frames=4) if classes is None else dict(num_frames=4, classes=classes)
    writer = LatentStoreWriter(str(root), 2, (4, 4, 8, 8), meta=meta)
    writer.write_shard(0, np.zeros((2, 1, 2, 4, 4, 8, 8), np.float32), [0, 1])
    writer.finalize()


def test_a_store_without_class_names_among_several_is_noted(tmp_path, capsys):
    """Before, its labels passed the stores' label by label check without a word."""
    _labelled_store(tmp_path / 'new', ['biking', 'bunny'])
    _labelled_store(tmp_path / 'old', None)
    cfg = Config(dict(model=dict(type='LatentDiffusion', num_classes=2),
                      train_dataloader=dict(dataset=dict(
                          type='PackedLatentDataset', data_root=str(tmp_path),
                          store=['new', 'old']))))
    check_latent_store(cfg)
    err = capsys.readouterr().err
    old = osp.join(str(tmp_path), 'old')
    assert (f'note: {old}: the store records no class names (begun by an older mmsora): '
            'its labels cannot be compared with those of the other stores trained with '
            'it') in err
    assert 'new: the store records no' not in err and err.count('\n') == 1
    cfg.train_dataloader.dataset.store = 'old'  # (alone: nothing to compare with)
    check_latent_store(cfg)
    assert capsys.readouterr().err == ''


def test_a_store_scaled_by_the_old_default_says_how_to_keep_it(image_folder, sdxl_like_vae,
                                                               tmp_path):
    """Earlier versions scaled by 0.18215 whatever the folder said: the same command, run
    again, was refused with no word of why its scale had changed."""
    out = str(tmp_path / 'store')
    # (as an earlier version wrote it from this folder)
    interrupted(lambda: run_extract(image_folder, out, sdxl_like_vae, '--scale-factor',
                                    '0.18215'))
    with pytest.raises(UserError) as info:
        run_extract(image_folder, out, sdxl_like_vae)
    message = str(info.value)
    assert '\n' not in message
    assert 'written with scale_factor=0.18215' in message
    assert message.endswith(
        "this run has scale_factor=0.13025: use another output folder or the same settings "
        "(set by --scale-factor); earlier versions scaled every --vae store by 0.18215 (not "
        "the VAE folder's scaling_factor): '--scale-factor 0.18215' keeps this store")
    summary = run_extract(image_folder, out, sdxl_like_vae, '--scale-factor', '0.18215')
    assert summary['complete']
    # another scale than the old default: no word of it
    out2 = str(tmp_path / 'store2')
    interrupted(lambda: run_extract(image_folder, out2, sdxl_like_vae, '--scale-factor',
                                    '0.5'))
    with pytest.raises(UserError) as info:
        run_extract(image_folder, out2, sdxl_like_vae)
    assert 'earlier versions' not in str(info.value)


def test_converting_into_a_complete_store_says_nothing_to_do(tmp_path, capsys):
    """As extract_features.py says it. Before: two empty progress bars and '11 latents
    in 3 shards at OUT (0 written in this run)'."""
    feats, labels = write_fastdit_features(tmp_path)
    out = str(tmp_path / 'packed')
    argv = ['--features-dir', str(feats), '--labels-dir', str(labels), '--out', out,
            '--shard-size', '4']
    first = convert.main(argv)
    assert '(3 written in this run)' in capsys.readouterr().out
    mtimes = shard_mtimes(out)
    again = convert.main(argv)
    out_text, err_text = capsys.readouterr()
    assert out_text == (f'convert_fastdit_features.py: {out} is complete (11 items in 3 '
                        'shards): nothing to do\n')
    assert err_text == ''  # (no progress bar)
    assert again == first and shard_mtimes(out) == mtimes
    # a shard found cut short since is written again, as before
    with open(osp.join(out, 'shard_00001.npy'), 'r+b') as f:
        f.truncate(100)
    convert.main(argv)
    assert '(1 written in this run)' in capsys.readouterr().out
