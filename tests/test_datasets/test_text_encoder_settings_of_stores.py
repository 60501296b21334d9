"""The text encoder's settings of a latent store's captions: the options that set them
(extract_features.py), the folder it records, stores of two settings trained as one
dataset, and a store's settings against the config's text encoder (tools/train.py)."""
import glob
import json
import os.path as osp
import shutil

import numpy as np
import pytest

from mmsora.datasets import LatentStore, LatentStoreWriter, PackedLatentDataset
from mmsora.utils.cli import UserError
from tests.extract_tools import interrupted, run_extract
from tests.test_datasets.test_packed_several_stores import write

pytestmark = pytest.mark.usefixtures('kept_environ')


# --------------------------------------------------------------------------- #
#                 options for captions without --text-encoder                  #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('given,named', [
    (['--text-encoder-dtype', 'bfloat16'], '--text-encoder-dtype is'),
    (['--hidden-layer', '-1', '--max-length', '8'], '--max-length and --hidden-layer are'),
    (['--text-encoder-kind', 't5'], '--text-encoder-kind is'),
])
def test_a_text_encoder_option_without_a_text_encoder_is_refused(image_folder, tiny_vae_dir,
                                                                 tmp_path, given, named):
    """They were ignored without a word: a store without caption embeddings."""
    out = str(tmp_path / 'out')
    with pytest.raises(UserError, match=rf'^{named} for caption embeddings, which this run '
                                        r'does not store: give --text-encoder DIR with '
                                        r'(it|them), or leave (it|them) out$'):
        run_extract(image_folder, out, tiny_vae_dir, *given)
    assert not osp.exists(out)


# --------------------------------------------------------------------------- #
#                          the folder a store records                          #
# --------------------------------------------------------------------------- #
def set_recorded_folder(out, folder):
    """Write ``folder`` as the text encoder a store's records name (as an older
    mmsora recorded the command line's)."""
    for path in glob.glob(osp.join(out, 'parts', '*.json')) + [osp.join(out, 'index.json')]:
        if osp.exists(path):
            with open(path) as f:
                record = json.load(f)
            record['meta']['text_encoder'] = folder
            with open(path, 'w') as f:
                json.dump(record, f)


def test_the_text_encoder_folder_is_recorded_absolute(image_folder, tiny_vae_dir, t5_dir,
                                                      tmp_path, monkeypatch):
    """Recorded as given (relative), a rerun from another working directory with the
    same folder was refused as another text encoder."""
    near, name = osp.split(t5_dir)
    base = ('--max-length', '8')
    begun = str(tmp_path / 'begun')
    monkeypatch.chdir(near)
    interrupted(lambda: run_extract(image_folder, begun, tiny_vae_dir, '--text-encoder',
                                    name, *base))
    monkeypatch.chdir(tmp_path)
    assert run_extract(image_folder, begun, tiny_vae_dir, '--text-encoder', t5_dir,
                       *base)['complete']
    assert LatentStore(begun).index['meta']['text_encoder'] == t5_dir
    # a store that records a relative folder (an older mmsora's) is read from the
    # working directory of the run, as before
    old = str(tmp_path / 'old')
    monkeypatch.chdir(near)
    interrupted(lambda: run_extract(image_folder, old, tiny_vae_dir, '--text-encoder',
                                    name, *base))
    set_recorded_folder(old, name)
    assert run_extract(image_folder, old, tiny_vae_dir, '--text-encoder', name,
                       *base)['complete']


# --------------------------------------------------------------------------- #
#                    stores of two settings as one dataset                     #
# --------------------------------------------------------------------------- #
ENCODED = dict(text_encoder='checkpoints/t5', text_encoder_kind='t5', hidden_layer=None)


@pytest.mark.parametrize('other,named', [
    (dict(text_encoder_dtype='bfloat16'), "text_encoder_dtype 'float32' against 'bfloat16' "
                                          r"\(their captions' text encoder\): extract one of "
                                          "them again with the other's --text-encoder-dtype$"),
    (dict(text_encoder_kind='clip'), "text_encoder_kind 't5' against 'clip'"),
    (dict(hidden_layer=-2), 'hidden_layer None against -2'),
])
def test_stores_of_captions_encoded_otherwise_are_refused(tmp_path, other, named):
    """Their embeddings trained as one dataset without a word."""
    write(str(tmp_path / 'a'), [0, 1], text=(3, 8), meta=ENCODED)
    write(str(tmp_path / 'b'), [0, 1], text=(3, 8), meta=dict(ENCODED, **other))
    with pytest.raises(ValueError, match=r"latent stores '.*a' and '.*b' cannot be read as "
                                         rf'one dataset: {named}'):
        PackedLatentDataset(str(tmp_path), store=['a', 'b'])


def test_stores_of_captions_encoded_alike_are_read_as_one(tmp_path):
    """Another folder (one model kept in two places), a dtype recorded as the default
    is, a store of an older mmsora (no hidden layer) or of another writer (no text
    encoder recorded): read as one."""
    write(str(tmp_path / 'a'), [0, 1], text=(3, 8), meta=ENCODED)
    write(str(tmp_path / 'b'), [0, 1], text=(3, 8),
          meta=dict(ENCODED, text_encoder='/elsewhere/t5', text_encoder_dtype='float32'))
    older = {k: v for k, v in ENCODED.items() if k != 'hidden_layer'}
    write(str(tmp_path / 'c'), [0, 1], text=(3, 8), meta=older)
    write(str(tmp_path / 'c2'), [0, 1], text=(3, 8), meta=dict(ENCODED, hidden_layer=-2))
    write(str(tmp_path / 'd'), [0, 1], text=(3, 8))
    assert len(PackedLatentDataset(str(tmp_path), store=['a', 'b', 'c', 'd'])) == 8
    assert len(PackedLatentDataset(str(tmp_path), store=['c', 'c2', 'd'])) == 6


# --------------------------------------------------------------------------- #
#                  a store's encoder against the config's one                  #
# --------------------------------------------------------------------------- #
def text_store_config(repo_root, tmp_path):
    """(config, store folder): the T5 clips config with a tiny text store's shapes,
    its text encoder in float32, training on the store folder ``tmp_path/store``."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(repo_root,
                                   'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py'))
    cfg.model.latent_shape, cfg.model.denoiser.text_dim = (4, 2, 4, 4), 8
    cfg.model.text_encoder.dtype = 'float32'
    root = str(tmp_path / 'store')
    cfg.train_dataloader.dataset.data_root = root
    return cfg, root


def text_store(root, meta):
    writer = LatentStoreWriter(root, 1, (4, 2, 4, 4), text_shape=(120, 8), meta=meta)
    writer.write_shard(0, np.zeros((1, 1, 2, 4, 2, 4, 4), np.float32), [0],
                       text=dict(text_embeds=np.zeros((1, 120, 8), np.float32),
                                 text_mask=np.ones((1, 120), bool)))
    writer.finalize()


def test_captions_of_another_dtype_than_the_samplers_are_noted(repo_root, tmp_path, capsys):
    """The t5 config samples with a bfloat16 encoder: a store encoded in float32 (the
    extraction's default) trained it without a word."""
    from mmengine.config import Config

    from mmsora.datasets.store_checks import check_latent_store
    cfg = Config.fromfile(osp.join(repo_root,
                                   'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py'))
    cfg.model.latent_shape, cfg.model.denoiser.text_dim = (4, 2, 4, 4), 8
    root = str(tmp_path / 'store')
    cfg.train_dataloader.dataset.data_root = root
    text_store(root, ENCODED)
    check_latent_store(cfg)
    assert (f'note: {root}: the captions were encoded in float32 (extract_features.py '
            '--text-encoder-dtype float32) but model.text_encoder.dtype is bfloat16: prompts '
            'are encoded in bfloat16 at sampling; set model.text_encoder.dtype=float32 to '
            'sample as the model was trained\n') in capsys.readouterr().err
    cfg.model.text_encoder.dtype = 'float32'
    check_latent_store(cfg)
    assert 'captions were encoded' not in capsys.readouterr().err
    del cfg.model.text_encoder['dtype']  # HFTextEncoder's default: float32
    check_latent_store(cfg)
    assert 'captions were encoded' not in capsys.readouterr().err
    shutil.rmtree(root)
    text_store(root, dict(ENCODED, text_encoder_dtype='bfloat16'))
    check_latent_store(cfg)
    assert ('the captions were encoded in bfloat16 (extract_features.py --text-encoder-dtype '
            'bfloat16) but model.text_encoder.dtype is unset (float32): prompts are encoded '
            'in float32 at sampling; set model.text_encoder.dtype=bfloat16 to sample as the '
            'model was trained') in capsys.readouterr().err
    # a store that does not record its text encoder (not extract_features.py's) is not
    # taken for float32
    shutil.rmtree(root)
    text_store(root, None)
    cfg.model.text_encoder.dtype = 'bfloat16'
    check_latent_store(cfg)
    assert 'captions were encoded' not in capsys.readouterr().err
    # HFTextEncoder takes any of torch's names: 'half' is a float16 store's float16
    shutil.rmtree(root)
    text_store(root, dict(ENCODED, text_encoder_dtype='float16'))
    cfg.model.text_encoder.dtype = 'half'
    check_latent_store(cfg)
    assert 'captions were encoded' not in capsys.readouterr().err
    cfg.model.text_encoder.dtype = 'bfloat16'
    check_latent_store(cfg)
    assert 'model.text_encoder.dtype is bfloat16' in capsys.readouterr().err


def test_captions_of_another_hidden_layer_than_the_samplers_are_noted(repo_root, tmp_path,
                                                                      capsys):
    """A store encoded from one hidden state (extract_features.py --hidden-layer) and a
    config whose text encoder takes another at sampling trained and sampled without a
    word: the model is prompted with embeddings of a layer it never saw."""
    from mmsora.datasets.store_checks import check_latent_store
    cfg, root = text_store_config(repo_root, tmp_path)

    def check(meta, layer):
        shutil.rmtree(root, ignore_errors=True)
        text_store(root, meta)
        cfg.model.text_encoder.hidden_layer = layer
        check_latent_store(cfg)
        return capsys.readouterr().err

    assert (f'note: {root}: the captions were encoded from the last hidden state after the '
            'final norm (extract_features.py without --hidden-layer) but '
            'model.text_encoder.hidden_layer is -2: prompts are taken from hidden state -2 at '
            'sampling; set model.text_encoder.hidden_layer=None to sample as the model was '
            'trained\n') in check(ENCODED, -2)
    assert (f'note: {root}: the captions were encoded from hidden state -2 '
            '(extract_features.py --hidden-layer -2) but model.text_encoder.hidden_layer is '
            'unset (the last hidden state after the final norm): prompts are taken from the '
            'last hidden state after the final norm at sampling; set '
            'model.text_encoder.hidden_layer=-2 to sample as the model was trained\n'
            ) in check(dict(ENCODED, hidden_layer=-2), None)
    assert 'hidden_layer=-1 to sample' in check(dict(ENCODED, hidden_layer=-1), -2)
    # before the dtype's, which matters less
    cfg.model.text_encoder.dtype = 'bfloat16'
    err = check(ENCODED, -2)
    assert -1 < err.index('hidden_layer=None') < err.index('dtype=float32')
    cfg.model.text_encoder.dtype = 'float32'
    # the same layer; a store of an older mmsora (no hidden layer recorded); one that
    # records no text encoder (not extract_features.py's)
    older = {k: v for k, v in ENCODED.items() if k != 'hidden_layer'}
    for meta, layer in [(ENCODED, None), (dict(ENCODED, hidden_layer=-2), -2), (older, -2),
                        (older, None), (dict(hidden_layer=-2), None)]:
        assert 'captions were encoded' not in check(meta, layer), (meta, layer)
    # T5's hidden_states[-1] is its last hidden state after the final norm (None); a
    # CLIP text tower's is before it
    for meta, layer in [(dict(ENCODED, hidden_layer=-1), None), (ENCODED, -1)]:
        assert 'captions were encoded' not in check(meta, layer), (meta, layer)
    cfg.model.text_encoder.kind = 'clip'
    assert 'hidden_layer=-1 to sample' in check(
        dict(ENCODED, text_encoder_kind='clip', hidden_layer=-1), None)


def test_t5_stores_of_hidden_layer_minus_1_and_none_are_read_as_one(tmp_path):
    """T5's hidden state -1 and its last hidden state (no --hidden-layer) are one
    tensor: two such stores are not refused as encoded otherwise; CLIP's are."""
    from mmsora.datasets.packed_latent_dataset import text_encoding

    class Store:
        def __init__(self, **meta):
            self.index = dict(meta=dict(ENCODED, **meta))

    assert text_encoding(Store(hidden_layer=-1)) == text_encoding(Store(hidden_layer=None))
    assert text_encoding(Store(text_encoder_kind='clip', hidden_layer=-1)) != \
        text_encoding(Store(text_encoder_kind='clip', hidden_layer=None))
