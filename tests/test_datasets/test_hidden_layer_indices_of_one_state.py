"""A text encoder's hidden layer given as a positive index and as the same layer's
negative one (CLIP-L's penultimate, 11 and -2; T5's last, num_layers and -1 or None):
one hidden state, counted with the encoder folder's layers where that folder is here,
both in the note of a store against the config's encoder (tools/train.py) and between
stores read as one dataset (PackedLatentDataset)."""
import os.path as osp
import shutil

import pytest
import torch

from mmsora.datasets import PackedLatentDataset
from mmsora.models import HFTextEncoder
from mmsora.models.text_encoders.hf_text_encoder import hidden_layer_count, same_hidden_state
from tests.test_datasets.test_packed_several_stores import write
from tests.test_datasets.test_text_encoder_settings_of_stores import (text_store,
                                                                      text_store_config)
from tests.tiny_models import make_tiny_clip, make_tiny_text_encoder

pytest.importorskip('transformers')
pytestmark = pytest.mark.usefixtures('kept_environ')

CLIP = 'clip_with_projection'  # (the clip_path fixture: 2 layers, as t5_dir)


def encoded(folder, kind, layer):
    """A store's record of captions encoded by ``folder`` at ``layer``."""
    return dict(text_encoder=folder, text_encoder_kind=kind, hidden_layer=layer)


# --------------------------------------------------------------------------- #
#                     what the encoder computes, and its layers                #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('kind', ['t5', CLIP])
def test_indices_taken_as_one_state_encode_alike(t5_dir, clip_path, kind):
    """Against the encoder itself: two hidden layers give the same embeddings exactly
    where same_hidden_state, with the folder's layer count, makes them one value (every
    index of the 2-layer encoder, positive and negative, and None)."""
    path = t5_dir if kind == 't5' else clip_path
    layers = hidden_layer_count(path, kind)
    assert layers == 2
    enc = HFTextEncoder(path, kind=kind, max_length=8)
    states = {}
    for layer in [None, *range(-layers - 1, layers + 1)]:
        enc.hidden_layer = layer
        states[layer] = enc.encode(['a red disk on snow'])[0]
    for a, one in states.items():
        for b, other in states.items():
            one_value = same_hidden_state(kind, a, layers) == same_hidden_state(kind, b, layers)
            assert torch.equal(one, other) == one_value, (a, b)
    # an index out of range is left as it is, and the encoder still refuses it
    assert same_hidden_state(kind, layers + 1, layers) == layers + 1
    assert same_hidden_state(kind, -layers - 2, layers) == -layers - 2
    enc.hidden_layer = layers + 1
    with pytest.raises(IndexError):
        enc.encode(['a red disk'])


def test_the_layer_count_is_the_folders_as_the_encoder_loads_it(tmp_path, t5_dir):
    """A pipeline's text_encoder/, a whole CLIP model's text tower (its text_config);
    unknown (None) for a folder that is not here or holds another kind's model."""
    make_tiny_text_encoder(str(tmp_path / 'pipe' / 'text_encoder'), 'clip', width=16)
    assert hidden_layer_count(str(tmp_path / 'pipe'), 'clip') == 2
    whole = make_tiny_clip(str(tmp_path / 'whole'))  # 1 text layer
    assert hidden_layer_count(whole, 'clip') == 1
    enc = HFTextEncoder(whole, kind='clip', max_length=8)
    states = []
    for layer in (1, -1, 0):
        enc.hidden_layer = layer
        states.append(enc.encode(['a red disk'])[0])
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
    assert hidden_layer_count(str(tmp_path / 'missing'), 't5') is None
    assert hidden_layer_count(t5_dir, 'clip') is None
    assert hidden_layer_count(None, 't5') is None


# --------------------------------------------------------------------------- #
#                  a store's hidden layer against the config's                 #
# --------------------------------------------------------------------------- #
@pytest.fixture
def check(repo_root, tmp_path, capsys):
    """check(meta, folder, kind, layer): the notes of tools/train.py's store checks on
    a store recording ``meta`` under a config whose text encoder is ``folder`` of
    ``kind`` at ``layer``."""
    from mmsora.datasets.store_checks import check_latent_store
    cfg, root = text_store_config(repo_root, tmp_path)

    def run(meta, folder, kind, layer):
        shutil.rmtree(root, ignore_errors=True)
        text_store(root, meta)
        cfg.model.text_encoder.update(pretrained_path=folder, kind=kind, hidden_layer=layer)
        capsys.readouterr()
        check_latent_store(cfg)
        return capsys.readouterr().err
    return run


@pytest.mark.parametrize('stored,ours', [(-2, 1), (1, -2), (-1, 2), (0, -3)])
def test_a_clip_layers_two_indices_are_not_noted(check, clip_path, stored, ours):
    """-2 of the 2-layer CLIP is its layer 1 (hidden_states[1]): a false note at every
    training start."""
    assert 'hidden_layer' not in check(encoded(clip_path, CLIP, stored), clip_path, CLIP,
                                       ours)


@pytest.mark.parametrize('stored,ours', [(2, None), (None, 2), (2, -1), (1, -2)])
def test_a_t5_layers_two_indices_are_not_noted(check, t5_dir, stored, ours):
    """T5's last index (num_layers, here 2) is its last hidden state, after the final
    norm: no --hidden-layer and -1 alike."""
    assert 'hidden_layer' not in check(encoded(t5_dir, 't5', stored), t5_dir, 't5', ours)


def test_another_layer_is_still_noted(check, clip_path, t5_dir, tmp_path):
    clip = encoded(clip_path, CLIP, -2)
    said = check(clip, clip_path, CLIP, 2)
    assert ('the captions were encoded from hidden state -2 (extract_features.py '
            '--hidden-layer -2) but model.text_encoder.hidden_layer is 2: prompts are '
            'taken from hidden state 2 at sampling; set model.text_encoder.hidden_layer=-2 '
            'to sample as the model was trained') in said
    # CLIP's last index is before the final norm; T5's one below its last is not it
    assert 'hidden_layer=2 to sample' in check(encoded(clip_path, CLIP, 2), clip_path,
                                               CLIP, None)
    assert 'hidden_layer=1 to sample' in check(encoded(t5_dir, 't5', 1), t5_dir, 't5', None)
    # an index past the encoder's layers is compared as it is (the encoder refuses it)
    assert 'hidden_layer is 3:' in check(clip, clip_path, CLIP, 3)
    # a folder that is not here (a store from another machine, the config's moved):
    # compared as given
    elsewhere = str(tmp_path / 'elsewhere')
    assert 'hidden_layer is 1:' in check(encoded(elsewhere, CLIP, -2), clip_path, CLIP, 1)
    assert 'hidden_layer is 1:' in check(clip, elsewhere, CLIP, 1)


# --------------------------------------------------------------------------- #
#                       stores read as one dataset                             #
# --------------------------------------------------------------------------- #
def test_stores_of_one_layers_two_indices_are_read_as_one(tmp_path, clip_path, t5_dir):
    for name, meta in [('a', encoded(clip_path, CLIP, -2)), ('b', encoded(clip_path, CLIP, 1)),
                       ('c', encoded(t5_dir, 't5', 2)), ('d', encoded(t5_dir, 't5', None)),
                       ('e', encoded(t5_dir, 't5', -1))]:
        write(str(tmp_path / name), [0, 1], text=(3, 8), meta=meta)
    assert len(PackedLatentDataset(str(tmp_path), store=['a', 'b'])) == 4
    assert len(PackedLatentDataset(str(tmp_path), store=['c', 'd', 'e'])) == 6


@pytest.mark.parametrize('one,other,named', [
    (encoded('{clip}', CLIP, -2), encoded('{clip}', CLIP, 2), 'hidden_layer -2 against 2'),
    (encoded('{t5}', 't5', 1), encoded('{t5}', 't5', None), 'hidden_layer 1 against None'),
    # a folder not here: as given
    (encoded('{clip}', CLIP, -2), encoded('{gone}', CLIP, 1), 'hidden_layer -2 against 1'),
])
def test_stores_of_another_layer_are_still_refused(tmp_path, clip_path, t5_dir, one, other,
                                                   named):
    folders = dict(clip=clip_path, t5=t5_dir, gone=str(tmp_path / 'gone'))
    for name, meta in [('a', one), ('b', other)]:
        meta = dict(meta, text_encoder=meta['text_encoder'].format(**folders))
        write(str(tmp_path / name), [0, 1], text=(3, 8), meta=meta)
    with pytest.raises(ValueError, match=rf'cannot be read as one dataset: {named} '):
        PackedLatentDataset(str(tmp_path), store=['a', 'b'])


def with_layers(folder, dest, count):
    """A copy of an encoder folder whose config.json says ``count`` layers."""
    import json
    shutil.copytree(folder, dest)
    with open(osp.join(dest, 'config.json')) as f:
        config = json.load(f)
    config['num_hidden_layers'] = count
    with open(osp.join(dest, 'config.json'), 'w') as f:
        json.dump(config, f)
    return str(dest)


def test_a_layer_as_far_from_the_end_of_another_model_is_another_state(tmp_path, clip_path):
    """Folders of two models of different depths: layer 1 of the 2-layer one and -2 of
    a 3-layer one are other hidden states (counted each with its own folder they had
    been one: the stores read together, no note)."""
    deeper = with_layers(clip_path, tmp_path / 'deeper', 3)
    write(str(tmp_path / 'a'), [0, 1], text=(3, 8), meta=encoded(clip_path, CLIP, 1))
    write(str(tmp_path / 'b'), [0, 1], text=(3, 8), meta=encoded(deeper, CLIP, -2))
    with pytest.raises(ValueError, match=r'hidden_layer 1 against -2 '):
        PackedLatentDataset(str(tmp_path), store=['a', 'b'])


def test_an_unreadable_layer_count_compares_as_given(tmp_path, clip_path):
    """A recorded folder whose config does not hold a layer count transformers takes
    (num_hidden_layers null: transformers 5 raised its own validation error through the
    check), or a kind that is not a name: the stores are refused as before, not crashed."""
    odd = with_layers(clip_path, tmp_path / 'odd', None)
    assert hidden_layer_count(odd, CLIP) is None
    assert hidden_layer_count(clip_path, ['clip']) is None
    write(str(tmp_path / 'a'), [0, 1], text=(3, 8), meta=encoded(odd, CLIP, 1))
    write(str(tmp_path / 'b'), [0, 1], text=(3, 8), meta=encoded(clip_path, CLIP, -2))
    with pytest.raises(ValueError, match=r'hidden_layer 1 against -2 '):
        PackedLatentDataset(str(tmp_path), store=['a', 'b'])
