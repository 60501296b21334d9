"""A Hugging Face cache folder (``models--org--name``, what ``huggingface-cli download``
or a ``from_pretrained`` on another machine leaves under ~/.cache/huggingface/hub) given
as the VAE or the text encoder: its snapshot is read, as a DiT's already was. Before,
the VAE said 'has no config.json (not a diffusers AutoencoderKL folder)' and the text
encoder 'has neither config.json nor text_encoder/config.json' of a folder that holds
both, one level down."""
import shutil

import numpy as np
import torch

from mmsora.datasets import LatentStore
from mmsora.models import HFTextEncoder
from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.utils.checkpoint import hub_snapshot
from tests.extract_tools import run_extract
from tests.tiny_models import make_tiny_text_encoder


def as_hub_cache(folder, root, refs=True):
    """``folder`` copied into ``root`` as the Hugging Face cache lays it out."""
    snapshot = root / 'snapshots' / '0123abcd'
    shutil.copytree(folder, snapshot)
    if refs:
        (root / 'refs').mkdir()
        (root / 'refs' / 'main').write_text('0123abcd')
    return str(root)


def test_a_cache_folder_is_read_at_its_snapshot(tiny_vae_dir, tmp_path):
    cache = as_hub_cache(tiny_vae_dir, tmp_path / 'models--stabilityai--sd-vae-ft-ema')
    assert hub_snapshot(cache) == str(tmp_path / 'models--stabilityai--sd-vae-ft-ema' /
                                      'snapshots' / '0123abcd')
    # without refs/main: its only snapshot; a plain folder is itself
    bare = as_hub_cache(tiny_vae_dir, tmp_path / 'models--a--b', refs=False)
    assert hub_snapshot(bare).endswith('snapshots/0123abcd')
    assert hub_snapshot(tiny_vae_dir) == tiny_vae_dir
    ours = AutoencoderKLWrapper(pretrained_path=cache)
    plain = AutoencoderKLWrapper(pretrained_path=tiny_vae_dir)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (1, 3, 16, 16))).float()
    np.testing.assert_array_equal(ours.encode_moments(x)[0].numpy(),
                                  plain.encode_moments(x)[0].numpy())
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    cached_t5 = as_hub_cache(t5, tmp_path / 'models--google--t5-v1_1-xxl')
    ours, _, _ = HFTextEncoder(cached_t5, max_length=8).encode(['a cat'])
    theirs, _, _ = HFTextEncoder(t5, max_length=8).encode(['a cat'])
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_extraction_takes_cache_folders(image_folder, tiny_vae_dir, tmp_path):
    vae = as_hub_cache(tiny_vae_dir, tmp_path / 'models--stabilityai--sd-vae-ft-ema')
    t5 = as_hub_cache(make_tiny_text_encoder(str(tmp_path / 't5'), 't5'),
                      tmp_path / 'models--google--t5-v1_1-xxl')
    out = str(tmp_path / 'store')
    summary = run_extract(image_folder, out, vae, '--text-encoder', t5, '--max-length', '8')
    assert summary['complete'] and summary['num_items'] == 6
    assert LatentStore(out).text_shape == (8, 32)  # (the tiny T5: 32 wide)


def test_a_stable_cascade_cache_folder_decodes(tmp_path):
    from mmsora.models import StableCascadeDecoder
    from mmsora.utils.tiny_checkpoints import make_tiny_stable_cascade_decoder
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    cache = as_hub_cache(folder, tmp_path / 'models--stabilityai--stable-cascade')
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    outs = [StableCascadeDecoder(path, latent_dim_scale=2.0, num_steps=1).decode(z)
            for path in (folder, cache)]
    torch.testing.assert_close(outs[0], outs[1])
