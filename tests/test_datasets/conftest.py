import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from tests.tiny_models import TINY_VAE


@pytest.fixture(scope='session')
def tiny_vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('vae')
    AutoencoderKL(**TINY_VAE).save_pretrained(path)
    return str(path)


@pytest.fixture
def image_folder(tmp_path):
    """2 classes, 3 PNGs each of assorted sizes, plus one corrupt file in class 'b'."""
    rng = np.random.default_rng(0)
    root = tmp_path / 'images'
    sizes = [(40, 24), (24, 24), (33, 50)]
    for cls in ('a', 'b'):
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f'{cls}{i}.png')
    (root / 'b' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
    (root / 'b' / 'notes.txt').write_text('not an image')
    return str(root)
