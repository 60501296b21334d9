"""The README's image demo, run exactly as a user runs it, must learn its data (the
main demo, a video one, is checked by tests/test_demo_video.py).

tools/train.py trains the demo config on the synthetic shapes; tools/infer.py writes
a PNG grid; we cut the grid back into pictures and classify each with a 1-nearest-
neighbour classifier over freshly generated shapes (other seed). Chance is 25%;
a model that learned colour and shape per class scores near 100%.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmsora.datasets import SyntheticShapesDataset

DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'


def tiles(grid, size, n, ncol):
    """Cut a save_image_grid PNG back into (n, 3, size, size) arrays in [-1, 1]."""
    out = []
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = 2 + r * (size + 2), 2 + c * (size + 2)
        out.append(grid[y:y + size, x:x + size].transpose(2, 0, 1))
    return np.stack(out).astype(np.float32) / 127.5 - 1


# ~6 minutes on 2 quiet cores; more when the machine is shared (pytest.ini says 900 s).
@pytest.mark.timeout(2400)
def test_demo_samples_show_the_classes(repo_root, tmp_path):
    env = {**os.environ}
    work = tmp_path / 'demo'
    train = subprocess.run([sys.executable, 'tools/train.py', DEMO, '--work-dir', str(work)],
                           cwd=repo_root, capture_output=True, text=True, timeout=1800, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    out = tmp_path / 'demo.png'
    labels = [0, 1, 2, 3] * 8
    infer = subprocess.run([sys.executable, 'tools/infer.py', str(work), '--labels',
                            *map(str, labels), '--out', str(out), '--nrow', '8'],
                           cwd=repo_root, capture_output=True, text=True, timeout=600, env=env)
    assert infer.returncode == 0, infer.stderr[-3000:]

    samples = tiles(np.asarray(Image.open(out).convert('RGB')), 16, len(labels), 8)
    reference = SyntheticShapesDataset(num_samples=1024, size=16, seed=123)
    ref = reference.images.reshape(len(reference), -1)
    dist = ((samples.reshape(len(samples), 1, -1) - ref[None]) ** 2).sum(-1)
    predicted = reference.labels[dist.argmin(1)]
    agreement = float((predicted == np.asarray(labels)).mean())
    print(f'1-NN agreement of demo samples with their labels: {agreement:.3f}')
    assert agreement >= 0.9, (agreement, predicted.tolist())
    # And the pictures are shapes, not noise: the RMS distance to the nearest real
    # picture is 0.17 (median) for held-out real shapes, 0.98 for uniform noise, and
    # 0.33-0.40 for the demo's samples after its 1500 steps (measured; the edges are
    # still ragged). 0.45 lets those pass and fails anything much noisier.
    nearest = np.sqrt(dist.min(1) / ref.shape[1])
    assert np.median(nearest) < 0.45, nearest
