import numpy as np
import pytest
from PIL import Image

from tests.tiny_data import make_clip

# tiny_vae_dir and sdxl_like_vae are tests/conftest.py's (other test folders use them too)


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


@pytest.fixture(scope='module')
def clip_bytes(tmp_path_factory):
    """The bytes of one 2-frame clip, copied wherever a test needs a video."""
    return open(make_clip(tmp_path_factory.mktemp('clip') / 'c.mp4'), 'rb').read()


@pytest.fixture
def clips(tmp_path, clip_bytes):
    """clips/bikes/{a,b}.mp4 and clips/films/c.mp4."""
    root = tmp_path / 'clips'
    for rel in ('bikes/a.mp4', 'bikes/b.mp4', 'films/c.mp4'):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(clip_bytes)
    return root


@pytest.fixture
def fastdit_features(tmp_path):
    """11 fast-DiT items (1, 4, 4, 4) with labels: the folders (features, labels) of
    :func:`tests.extract_tools.write_fastdit_features`."""
    from tests.extract_tools import write_fastdit_features  # (it loads the tools)
    return write_fastdit_features(tmp_path)
