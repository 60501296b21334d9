"""The tiny SiT demo the tools/infer.py tests of Transport sample from."""
import os.path as osp

from tests.cli_helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py')
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.latent_shape=[3,8,8]']


def load_infer():
    """tools/infer.py as a fresh module."""
    return load_tool('infer')
