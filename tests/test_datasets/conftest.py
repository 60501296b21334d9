import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

# A tiny random SD-style VAE: 2 blocks → spatial factor 2, 4 latent channels.
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=8, down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, sample_size=16)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convs run ~100x slower with 2 intra-op threads on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
