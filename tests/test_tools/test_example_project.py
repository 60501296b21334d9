"""projects/example, the template of a project of one's own (a denoiser and a dataset
registered through custom_imports, a config inheriting the demo), trains and samples
with the tools run from its folder, as its README says."""
import os
import subprocess
import sys

import numpy as np
from PIL import Image


def test_the_example_project_trains_and_samples(repo_root, tmp_path):
    project = os.path.join(repo_root, 'projects', 'example')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['PYTHONDONTWRITEBYTECODE'] = '1'  # (nothing written into the checkout)
    work = tmp_path / 'work'
    train = subprocess.run(
        [sys.executable, '../../tools/train.py', 'configs/conv_blobs16.py', '--work-dir',
         str(work), '--cfg-options', 'train_cfg.max_iters=4', 'param_scheduler=[]',
         'default_hooks.checkpoint.interval=4', 'default_hooks.logger.interval=1',
         'train_dataloader.batch_size=4'],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert 'TinyConvDenoiser' in (work / 'conv_blobs16.py').read_text()
    assert (work / 'iter_4.pth').exists()
    out = tmp_path / 'blobs.png'
    infer = subprocess.run(
        [sys.executable, '../../tools/infer.py', str(work), '--labels', '0', '1', '2', '3',
         '--steps', '3', '--out', str(out)],
        cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert infer.returncode == 0, infer.stderr[-3000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 + 16 + 2, 2 + 4 * (16 + 2), 3)
