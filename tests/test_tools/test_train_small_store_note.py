"""tools/train.py on a latent store of fewer samples than one global batch: mmengine's
InfiniteSampler fills every batch by going round the samples again, so 6 clips
extracted to try things trained as copies in a global batch of 256, without a word.
Noted (not refused: overfitting a few samples is a check worth running)."""
import json
import os.path as osp

import numpy as np
import pytest

from mmsora.datasets import LatentStoreWriter
from mmsora.datasets.store_checks import stores_length
from tools.train import build_train_config, parse_args

pytestmark = pytest.mark.usefixtures('kept_environ')

SHAPE = (4, 4, 8, 8)  # (C, T, h, w): an SD store of 4-frame clips at 8x8 latents


def make_store(root, count, num_copies=1):
    """A complete store of ``count`` clips as extract_features.py writes it (shards of 4)."""
    writer = LatentStoreWriter(str(root), count, SHAPE, num_copies=num_copies, shard_size=4,
                               meta=dict(num_frames=4))
    for shard, start in enumerate(range(0, count, 4)):
        n = min(4, count - start)
        writer.write_shard(shard, np.zeros((n, num_copies, 2, *SHAPE), np.float32), [0] * n)
    writer.finalize()
    return str(root)


def train_config(repo_root, tmp_path, stores, *options, launcher='none'):
    """tools/train.py's config of dit_xl2_video.py on ``stores`` under one data_root."""
    argv = [osp.join(repo_root, 'configs/dit_xl2_video.py'), '--work-dir',
            str(tmp_path / 'w'), '--launcher', launcher, '--cfg-options',
            f'train_dataloader.dataset.data_root={tmp_path}',
            f'train_dataloader.dataset.store={stores}'.replace(' ', ''),
            'model.latent_shape=[4,4,8,8]', 'model.denoiser.input_size=8',
            'model.denoiser.num_frames=4', *options]
    return build_train_config(parse_args(argv))


NOTE = ('{held} 6 samples, fewer than one global batch of {total} ({how}): every global '
        'batch repeats samples (InfiniteSampler goes round them again to fill it), so the '
        'run trains on copies of these 6; fine for overfitting a few as a check, else '
        'extract more or lower the batch')


def test_a_store_smaller_than_the_global_batch_is_noted(repo_root, tmp_path, capsys,
                                                        monkeypatch):
    store = make_store(tmp_path / 'six', 6)
    held = f'note: {store}: the store holds'
    train_config(repo_root, tmp_path, 'six', 'train_dataloader.batch_size=8')
    assert NOTE.format(held=held, total=8, how='train_dataloader.batch_size=8') in \
        capsys.readouterr().err
    # a global batch over 2 processes and 2 accumulation steps: 2 a process
    monkeypatch.setenv('WORLD_SIZE', '2')
    train_config(repo_root, tmp_path, 'six', 'global_batch_size=8',
                 'optim_wrapper.accumulative_counts=2', launcher='pytorch')
    assert NOTE.format(held=held, total=8, how='train_dataloader.batch_size=2 x 2 processes '
                       'x 2 accumulation steps') in capsys.readouterr().err
    # as many samples as one global batch, or more: nothing to say
    train_config(repo_root, tmp_path, 'six', 'train_dataloader.batch_size=3',
                 launcher='pytorch')
    assert 'global batch' not in capsys.readouterr().err
    monkeypatch.setenv('WORLD_SIZE', '1')
    train_config(repo_root, tmp_path, 'six')  # (the config's batch of 5)
    assert 'global batch' not in capsys.readouterr().err
    # mmengine's DefaultSampler makes smaller batches, it repeats nothing
    train_config(repo_root, tmp_path, 'six', 'train_dataloader.batch_size=8',
                 'train_dataloader.sampler.type=DefaultSampler')
    assert 'global batch' not in capsys.readouterr().err


def test_the_stores_of_a_dataset_are_counted_together(repo_root, tmp_path, capsys):
    make_store(tmp_path / 'a', 2)
    make_store(tmp_path / 'b', 4)
    train_config(repo_root, tmp_path, "['a','b']", 'train_dataloader.batch_size=8')
    assert NOTE.format(held='note: train_dataloader.dataset: its 2 stores hold', total=8,
                       how='train_dataloader.batch_size=8') in capsys.readouterr().err


def test_the_length_comes_from_the_index_alone(tmp_path):
    """Flip copies are the same samples (the dataset's length); a store whose length
    is not known from a complete index of this format is not counted."""
    from mmsora.datasets import PackedLatentDataset
    root = make_store(tmp_path / 'flip', 6, num_copies=2)

    def config(store):
        return dict(train_dataloader=dict(dataset=dict(
            type='PackedLatentDataset', data_root=str(tmp_path), store=store)))
    assert stores_length(config('flip')) == 6 == len(PackedLatentDataset(str(tmp_path), 'flip'))
    assert stores_length(config(['flip', 'flip'])) == 12
    assert stores_length(config('gone')) is None
    assert stores_length(dict(train_dataloader=dict(dataset=dict(type='VideoDataset')))) is None
    index_file = osp.join(root, 'index.json')
    with open(index_file) as f:
        index = json.load(f)
    with open(index_file, 'w') as f:
        json.dump(dict(index, complete=False), f)
    assert stores_length(config('flip')) is None
