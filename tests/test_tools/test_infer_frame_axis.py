"""tools/infer.py refuses a picture latent shape (C, H, W) for a run whose denoiser
makes clips, naming the shape: --cfg-options model.latent_shape=[16,4,4] on a video
run with --out DIR/ was told '--out DIR/: pictures are saved as one grid image'."""
import os.path as osp

import pytest

import mmsora.apis
from mmsora.utils.cli import run_cli
from tests.cli_helpers import load_tool
from tests.tiny_models import DEMO, VIDEO_DEMO

pytestmark = pytest.mark.usefixtures('kept_environ')


def never(*args, **kwargs):
    raise AssertionError('the weights were loaded before the check')


@pytest.mark.parametrize('config, shape, denoiser', [
    (VIDEO_DEMO, '[4,8,8]', 'VideoDiT'),
    ('configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py', '[16,4,4]',
     'StableCascadeVideo'),
])
def test_a_picture_latent_shape_on_a_video_run_is_named(repo_root, tmp_path, capsys,
                                                        monkeypatch, config, shape,
                                                        denoiser):
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    out = tmp_path / 'clips'
    argv = [osp.join(repo_root, config), '--checkpoint', str(tmp_path / 'x.pt'),
            '--out', f'{out}/', '--prompt', 'a red disk', '--cfg-options',
            f'model.latent_shape={shape}']
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    c, h, w = shape.strip('[]').split(',')
    given = shape.strip('[]').replace(',', ', ')
    assert capsys.readouterr().err.splitlines() == [
        f'error: model.latent_shape [{given}] has no frame axis, but this run\'s denoiser '
        f'{denoiser} makes clips: give it as (C, T, H, W), model.latent_shape=[{c},T,{h},'
        f'{w}] with T latent frames']
    assert not out.exists()


def test_a_picture_run_is_not_refused_for_its_latent_shape(repo_root, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    argv = [osp.join(repo_root, DEMO), '--checkpoint', str(tmp_path / 'x.pt'),
            '--out', f'{tmp_path}/clips/']
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    assert 'pictures are saved as one grid image' in capsys.readouterr().err
