"""tools/extract_features.py resumed into a store with the other index of the text
encoder layer it was begun with (the 2-layer CLIP's 1 and -2; T5's -1 and no
--hidden-layer): one hidden state, as training takes it, so the rerun goes on
(finished shards kept) and the store keeps recording the value it was begun with; a
really different layer is still refused."""
import glob
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch

from mmsora.datasets import LatentStore, PackedLatentDataset
from mmsora.models import HFTextEncoder
from mmsora.utils.cli import UserError
from tests.extract_tools import extract, interrupted, run_extract, shard_mtimes

pytest.importorskip('transformers')
pytestmark = pytest.mark.usefixtures('kept_environ')

CLIP = 'clip_with_projection'  # (the clip_path fixture: 2 layers; 1 and -2 are one)


def options(encoder, layer=None, kind=CLIP):
    return ('--text-encoder', encoder, '--text-encoder-kind', kind, '--max-length', '8',
            '--dtype', 'float32', *(() if layer is None else ('--hidden-layer', str(layer))))


def refused(layer, shown, where):
    """Today's refusal of another layer (as tests/test_datasets/test_extract_options.py)."""
    return (rf'holds a latent store written with hidden_layer={layer} \(in {where}\.json\); '
            rf'this run has hidden_layer={shown}: use another output folder or the same '
            r'settings \(set by --hidden-layer\)$')


def recorded_layers(out):
    """Every hidden_layer the store's files record: ``{(file, shard id or None): value}``."""
    found = {}
    for path in [osp.join(out, 'index.json')] + sorted(glob.glob(osp.join(out, 'parts',
                                                                          '*.json'))):
        if not osp.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        name = osp.relpath(path, out)
        if 'hidden_layer' in data.get('meta', {}):
            found[name, None] = data['meta']['hidden_layer']
        for shard in data['shards']:
            if 'hidden_layer' in (shard.get('meta') or {}):
                found[name, shard['id']] = shard['meta']['hidden_layer']
    return found


def moved_away(folder):
    """Take ``folder`` off this machine (a store read where its encoder is not)."""
    os.rename(folder, folder + '.gone')


def test_a_rerun_with_the_other_index_of_the_stores_layer_resumes(
        image_folder, tiny_vae_dir, tmp_path, clip_path, monkeypatch):
    """Rank 1 of a two-process run writes its shards with -2; a one-process rerun with
    1 (the same hidden state of the 2-layer CLIP) was refused. Now it writes the other
    shards only, and every file of the store says -2: recording its own 1, it left
    index.json saying 1 beside rank 1's part saying -2, and a later rerun where the
    encoder's folder is not at hand (its layers not countable) was refused."""
    clip = shutil.copytree(clip_path, str(tmp_path / 'clip'))
    out = str(tmp_path / 'store')
    with monkeypatch.context() as m:  # (rank 1 of 2: shards 1 and 3)
        m.setattr(extract, 'init_dist', lambda device: (1, 2, torch.device(device)))
        run_extract(image_folder, out, tiny_vae_dir, *options(clip, -2))
    assert recorded_layers(out) == {('parts/rank-00001.json', None): -2}
    # a really different layer: refused as before (hidden_states[2] is CLIP's last)
    for layer, shown in ((2, '2'), (None, 'None'), (0, '0')):
        with pytest.raises(UserError, match=refused(-2, shown, 'parts/rank-00001')):
            run_extract(image_folder, out, tiny_vae_dir, *options(clip, layer))
    before = shard_mtimes(out)
    summary = run_extract(image_folder, out, tiny_vae_dir, *options(clip, 1))
    assert summary['complete'] and summary['num_items'] == 6
    assert summary['shards_written'] == 2  # (0 and 2: rank 1's kept, not encoded again)
    assert {p: t for p, t in shard_mtimes(out).items() if p in before} == before
    assert recorded_layers(out) == {('index.json', None): -2,
                                    ('parts/rank-00000.json', None): -2,
                                    ('parts/rank-00001.json', None): -2}
    # it trains as one store of that layer (the tokens: the captions are the classes)
    data = PackedLatentDataset(out)
    assert len(data) == 6 and data.metainfo['hidden_layer'] == -2
    tokens, _, _ = HFTextEncoder(clip, kind=CLIP, max_length=8, hidden_layer=-2).encode(
        ['a'] * 3 + ['b'] * 3)
    store = LatentStore(out)
    for row in range(6):
        np.testing.assert_allclose(store.text(row)['text_embeds'], tokens[row].numpy(),
                                   atol=1e-5)
    for layer in (1, -2):  # complete: nothing to do, with either index
        assert run_extract(image_folder, out, tiny_vae_dir,
                           *options(clip, layer))['shards_written'] == 0
    with pytest.raises(UserError, match=refused(-2, '2', 'index')):
        run_extract(image_folder, out, tiny_vae_dir, *options(clip, 2))
    # where the folder is not here, the layers are compared as given: the store's own
    # value is the one every file records
    moved_away(clip)
    assert run_extract(image_folder, out, tiny_vae_dir,
                       *options(clip, -2))['shards_written'] == 0
    with pytest.raises(UserError, match=refused(-2, '1', 'index')):
        run_extract(image_folder, out, tiny_vae_dir, *options(clip, 1))


def _forget_the_hidden_layer(out):
    """Make ``out`` a store as the tool wrote it before the hidden layer was recorded."""
    for path in glob.glob(osp.join(out, 'parts', '*.json')):
        with open(path) as f:
            data = json.load(f)
        del data['meta']['hidden_layer']
        with open(path, 'w') as f:
            json.dump(data, f)


def test_a_shards_own_layer_takes_the_other_index_too(image_folder, tiny_vae_dir, tmp_path,
                                                      clip_path):
    """A store begun before the hidden layer was recorded: the shards a rerun wrote
    record theirs (-2) alone. A rerun with 1 was refused by them; now it resumes, and
    the shards it writes record -2 as well (they recorded 1: a later rerun where the
    folder is not here was refused by them)."""
    clip = shutil.copytree(clip_path, str(tmp_path / 'clip'))
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir, *options(clip, -2)))
    _forget_the_hidden_layer(out)
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir, *options(clip, -2)))
    assert recorded_layers(out) == {('parts/rank-00000.json', 1): -2}
    with pytest.raises(UserError, match=refused(-2, '2', 'parts/rank-00000')):
        run_extract(image_folder, out, tiny_vae_dir, *options(clip, 2))
    before = shard_mtimes(out)
    summary = run_extract(image_folder, out, tiny_vae_dir, *options(clip, 1))
    assert summary['complete'] and summary['shards_written'] == 2
    assert {p: t for p, t in shard_mtimes(out).items() if p in before} == before
    index = LatentStore(out).index
    assert 'hidden_layer' not in index['meta']  # (shard 0 may hold any)
    assert [s.get('meta') for s in index['shards']] == [None] + [dict(hidden_layer=-2)] * 3
    assert len(PackedLatentDataset(out)) == 6
    with pytest.raises(UserError, match=refused(-2, '2', 'index')):
        run_extract(image_folder, out, tiny_vae_dir, *options(clip, 2))
    moved_away(clip)
    assert run_extract(image_folder, out, tiny_vae_dir,
                       *options(clip, -2))['shards_written'] == 0


def test_t5s_minus_1_and_no_hidden_layer_are_one(image_folder, tiny_vae_dir, tmp_path,
                                                 t5_dir):
    """T5's hidden_states[-1] is its last hidden state after the final norm, as with no
    --hidden-layer: a rerun with the other was refused. Known without the folder."""
    t5 = shutil.copytree(t5_dir, str(tmp_path / 't5'))
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir, *options(t5, -1, 't5')))
    summary = run_extract(image_folder, out, tiny_vae_dir, *options(t5, kind='t5'))
    assert summary['complete'] and summary['shards_written'] == 3
    assert set(recorded_layers(out).values()) == {-1}
    with pytest.raises(UserError, match=refused(-1, '-2', 'index')):  # (layer 1 of 2)
        run_extract(image_folder, out, tiny_vae_dir, *options(t5, -2, 't5'))
    moved_away(t5)
    for layer in (None, -1):
        assert run_extract(image_folder, out, tiny_vae_dir,
                           *options(t5, layer, 't5'))['shards_written'] == 0
