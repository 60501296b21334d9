"""tools/extract_features.py: --hidden-layer recorded in the store (a resume with
another refused, stores from before it resume), and a --vae / --video-vae /
--text-encoder folder of another kind of model named in one line."""
import glob
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest

from mmsora.datasets import LatentStore, PackedLatentDataset
from mmsora.models import HFTextEncoder
from mmsora.utils.cli import UserError
from tests.extract_tools import extract, interrupted, run_extract
from tests.tiny_models import make_tiny_text_encoder


@pytest.fixture
def t5(tmp_path):
    return make_tiny_text_encoder(str(tmp_path / 't5'), 't5')


def text_options(t5, *more):
    return ('--text-encoder', t5, '--max-length', '8', '--dtype', 'float32', *more)


def other_layer(layer, shown):
    return (rf"holds a latent store written with hidden_layer={layer} \(in "
            rf"(parts/rank-00000|index)\.json\); this run has hidden_layer={shown}: use "
            r'another output folder or the same settings \(set by --hidden-layer\)$')


# --------------------------------------------------------------------------- #
#                          1. --hidden-layer in the store                      #
# --------------------------------------------------------------------------- #
def test_the_hidden_layer_is_recorded_and_another_is_refused(image_folder, tiny_vae_dir,
                                                             tmp_path, t5):
    """--hidden-layer was not recorded: a resume with another value was accepted and
    mixed the tokens of two layers in one store, and training could not tell."""
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir,
                                    *text_options(t5, '--hidden-layer', '-2')))
    for other, shown in (((), 'None'), (('--hidden-layer', '-1'), '-1')):
        with pytest.raises(UserError, match=other_layer(-2, shown)):
            run_extract(image_folder, out, tiny_vae_dir, *text_options(t5, *other))
    summary = run_extract(image_folder, out, tiny_vae_dir,
                          *text_options(t5, '--hidden-layer', '-2'))
    assert summary['complete'] and summary['num_items'] == 6
    with pytest.raises(UserError, match=other_layer(-2, 'None')):  # complete: still
        run_extract(image_folder, out, tiny_vae_dir, *text_options(t5))
    store = LatentStore(out)
    assert store.index['meta']['hidden_layer'] == -2
    assert PackedLatentDataset(out).metainfo['hidden_layer'] == -2  # training can tell
    # the tokens are that layer's (item 0 is a0.png: its caption is its class, 'a')
    layer, _, _ = HFTextEncoder(t5, max_length=8, hidden_layer=-2).encode(['a'])
    last, _, _ = HFTextEncoder(t5, max_length=8).encode(['a'])
    np.testing.assert_allclose(store.text(0)['text_embeds'], layer[0].numpy(), atol=1e-5)
    assert not np.allclose(store.text(0)['text_embeds'], last[0].numpy(), atol=1e-3)


def _forget_the_hidden_layer(out):
    """Make ``out`` a store as the tool wrote it before the hidden layer was recorded."""
    for path in glob.glob(osp.join(out, 'parts', '*.json')) + glob.glob(
            osp.join(out, 'index.json')):
        with open(path) as f:
            data = json.load(f)
        del data['meta']['hidden_layer']
        with open(path, 'w') as f:
            json.dump(data, f)


def test_a_store_from_before_the_hidden_layer_was_recorded_resumes(image_folder,
                                                                   tiny_vae_dir, tmp_path,
                                                                   t5):
    """An older store does not say which layer it holds: it resumes (unchecked on it,
    as one without a source fingerprint does); the shards this run writes record this
    run's, the store's record keeps it unknown (its older shards may hold any)."""
    out = str(tmp_path / 'store')
    options = text_options(t5, '--hidden-layer', '-1')  # (Stable Cascade's prior's)
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir, *options))
    _forget_the_hidden_layer(out)
    summary = run_extract(image_folder, out, tiny_vae_dir, *options)
    assert summary['complete'] and summary['num_items'] == 6
    index = LatentStore(out).index
    assert 'hidden_layer' not in index['meta']
    assert [s.get('meta') for s in index['shards']] == [None] + [dict(hidden_layer=-1)] * 3
    # a complete one reads, trains and reruns as before
    assert 'hidden_layer' not in PackedLatentDataset(out).metainfo
    assert run_extract(image_folder, out, tiny_vae_dir, *options)['shards_written'] == 0


# --------------------------------------------------------------------------- #
#                     2. a folder of another kind of model                     #
# --------------------------------------------------------------------------- #
def one_line(info):
    assert '\n' not in str(info.value)
    return str(info.value)


def test_a_text_encoder_given_as_the_vae_is_named(image_folder, tmp_path, t5):
    """It failed in diffusers with 'no file named diffusion_pytorch_model.bin'."""
    with pytest.raises(UserError) as info:
        run_extract(image_folder, str(tmp_path / 'out'), t5)
    assert one_line(info) == (
        f"VAE folder {t5!r} holds a transformers T5EncoderModel (its config.json), not a "
        "diffusers AutoencoderKL: give the VAE's folder (a text encoder goes to "
        'extract_features.py --text-encoder; in a config, to HFTextEncoder)')
    base = ['--data-path', image_folder, '--out', str(tmp_path / 'out'), '--image-size',
            '16', '--num-workers', '0', '--device', 'cpu', '--video-vae', t5]
    with pytest.raises(UserError) as info:  # it said: 'names no video VAE class (none)'
        extract.main(base)
    assert one_line(info) == (
        f'--video-vae {t5} holds a transformers T5EncoderModel (its config.json), not a '
        "diffusers video VAE: give the VAE's folder (a text encoder goes to "
        '--text-encoder)')
    with pytest.raises(UserError) as info:
        extract.main(base + ['--video-vae-class', 'AutoencoderKLWan'])
    assert one_line(info).startswith(
        f"VAE folder {t5!r} holds a transformers T5EncoderModel (its config.json), not a "
        "diffusers AutoencoderKLWan: give the VAE's folder")


def test_a_vae_given_as_the_text_encoder_is_named(image_folder, tiny_vae_dir, tmp_path):
    """It said the folder 'holds a None model'."""
    with pytest.raises(UserError) as info:
        run_extract(image_folder, str(tmp_path / 'out'), tiny_vae_dir,
                    '--text-encoder', tiny_vae_dir)
    assert one_line(info) == (
        f"text encoder folder {tiny_vae_dir!r} holds a diffusers AutoencoderKL (its "
        "config.json), not a transformers T5EncoderModel: give the text encoder's folder "
        'with its tokenizer, or a pipeline folder with text_encoder/ and tokenizer/ (a VAE '
        'goes to extract_features.py --vae; in a config, to AutoencoderKLWrapper)')


def test_a_vae_folder_without_weights_or_without_a_vae_is_named(image_folder, tiny_vae_dir,
                                                                tmp_path, t5, caplog):
    config_only = tmp_path / 'config_only'
    config_only.mkdir()
    shutil.copy(osp.join(tiny_vae_dir, 'config.json'), config_only)
    with pytest.raises(UserError) as info:  # diffusers: 'no file named ...bin found'
        run_extract(image_folder, str(tmp_path / 'out'), str(config_only))
    assert not [r for r in caplog.records if 'no file named' in r.getMessage()]  # nor logged
    assert one_line(info) == (
        f"VAE folder {str(config_only)!r} holds AutoencoderKL's config.json but no weights "
        '(diffusion_pytorch_model.safetensors or .bin, sharded with its .index.json, or a '
        'variant such as diffusion_pytorch_model.fp16.safetensors): copy them in beside '
        'it, or give the folder that holds them')
    pipeline = tmp_path / 'pipeline'  # a text-to-image pipeline's folder without vae/
    shutil.copytree(t5, pipeline / 'text_encoder')
    (pipeline / 'model_index.json').write_text(json.dumps(
        {'_class_name': 'StableDiffusionPipeline', 'text_encoder': ['transformers',
                                                                    'T5EncoderModel']}))
    with pytest.raises(UserError) as info:
        run_extract(image_folder, str(tmp_path / 'out'), str(pipeline))
    assert one_line(info) == (
        f"VAE folder {str(pipeline)!r} has no config.json (not a diffusers AutoencoderKL "
        'folder): a StableDiffusionPipeline folder (model_index.json) without vae/')
    assert not os.path.exists(tmp_path / 'out' / 'parts')  # nothing begun


def test_a_vae_folder_with_fp16_weights_alone_loads(image_folder, tiny_vae_dir, tmp_path):
    # the weights as diffusion_pytorch_model.fp16.safetensors alone (a variant, as hub
    # folders hold them): diffusers read it only when asked, and the folder was said
    # to hold no weights
    from diffusers import AutoencoderKL
    variant = tmp_path / 'vae_fp16'
    AutoencoderKL.from_pretrained(tiny_vae_dir).save_pretrained(variant, variant='fp16')
    assert sorted(os.listdir(variant)) == ['config.json',
                                           'diffusion_pytorch_model.fp16.safetensors']
    summary = run_extract(image_folder, str(tmp_path / 'out'), str(variant), '--dtype',
                          'float32')
    assert summary['num_items'] == 6
    ref = run_extract(image_folder, str(tmp_path / 'ref'), tiny_vae_dir, '--dtype', 'float32')
    assert ref['num_items'] == 6
    a, b = LatentStore(str(tmp_path / 'ref')), LatentStore(str(tmp_path / 'out'))
    np.testing.assert_array_equal(a[0], b[0])  # (the tiny VAE's weights were float32)
