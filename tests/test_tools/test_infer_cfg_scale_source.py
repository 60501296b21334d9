"""tools/infer.py names a guidance scale by the source the user gave it in: a NaN or a
scale below 1 given as --sampler-options cfg_scale=... was named 'sample_cfg.cfg_scale',
a key the user never wrote."""
import os.path as osp

import pytest

import mmsora.apis
from mmsora.utils.cli import run_cli
from tests.cli_helpers import load_tool
from tests.tiny_models import DEMO

pytestmark = pytest.mark.usefixtures('kept_environ')

TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.latent_shape=[3,8,8]']


def never(*args, **kwargs):
    raise AssertionError('the weights were loaded before the check')


@pytest.mark.parametrize('args, said', [
    (['--sampler-options', 'cfg_scale=nan'],
     '--sampler-options cfg_scale must be a finite number (the guidance scale; 1: none), '
     "got 'nan'"),
    (['--sampler-options', 'cfg_scale=0.5'],
     '--sampler-options cfg_scale must be >= 1 (1 disables guidance), got 0.5'),
    (['--sampler-options', 'cfg_scale=0.5', '--cfg-scale', 'nan'],
     '--cfg-scale must be a finite number (the guidance scale; 1: none), got nan'),
    (['--cfg-options', 'sample_cfg.cfg_scale="nan"'],
     "sample_cfg.cfg_scale must be a finite number (the guidance scale; 1: none), got "
     "'nan'"),
])
def test_the_guidance_scale_is_named_by_its_source(repo_root, tmp_path, capsys,
                                                   monkeypatch, args, said):
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    argv = [osp.join(repo_root, DEMO), '--checkpoint', str(tmp_path / 'dit.pt'),
            '--out', str(tmp_path / 'samples.png'), *args]
    argv += ['--cfg-options', *TINY] if '--cfg-options' not in args else TINY
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    assert capsys.readouterr().err.splitlines() == [f'error: {said}']
    assert not osp.exists(tmp_path / 'samples.png')
