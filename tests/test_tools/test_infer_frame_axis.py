"""tools/infer.py refuses a picture latent shape (C, H, W) for a run whose denoiser
makes clips, naming the shape: --cfg-options model.latent_shape=[16,4,4] on a video
run with --out DIR/ was told '--out DIR/: pictures are saved as one grid image'. The
denoiser is found as the model's build finds it, and says itself that it makes clips
(``makes_clips``): a list of names missed a subclass, the class given, one's own."""
import os.path as osp

import pytest
import torch

import mmsora.apis
from mmsora.models.denoisers import DiT, VideoDiT
from mmsora.registry import MODELS
from mmsora.utils.cli import UserError, run_cli
from mmsora.utils.config_loading import load_config
from tests.cli_helpers import load_tool
from tests.tiny_models import DEMO, VIDEO_DEMO

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

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


# ----------------------------------------------------- the denoiser as its build finds it
class OwnVideoDiTF2(VideoDiT):
    """A subclass of VideoDiT (registered by the test that names it, then removed)."""


class OwnClipDenoiserF2(torch.nn.Module):
    """A clip denoiser of one's own, no VideoDiT: its class says it makes clips (given
    as the class: nothing is registered)."""
    makes_clips = True


@pytest.fixture
def own_video_dit():
    """OwnVideoDiTF2 in the model registry for the test, its name."""
    MODELS.register_module(module=OwnVideoDiTF2)
    yield 'OwnVideoDiTF2'
    MODELS._module_dict.pop('OwnVideoDiTF2', None)


def test_a_registered_subclass_of_videodit_is_refused_a_picture_shape(
        repo_root, tmp_path, capsys, monkeypatch, own_video_dit):
    """Only the names 'VideoDiT' and 'StableCascadeVideo' were read: a subclass's
    picture shape was taken for a picture model."""
    monkeypatch.setattr(mmsora.apis, 'init_model', never)
    out = tmp_path / 'clips'
    argv = [osp.join(repo_root, VIDEO_DEMO), '--checkpoint', str(tmp_path / 'x.pt'),
            '--out', f'{out}/', '--cfg-options', f'model.denoiser.type={own_video_dit}',
            'model.latent_shape=[4,8,8]']
    assert run_cli(lambda: load_tool('infer').main(argv)) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: model.latent_shape [4, 8, 8] has no frame axis, but this run's denoiser "
        'OwnVideoDiTF2 makes clips: give it as (C, T, H, W), model.latent_shape=[4,T,8,8] '
        'with T latent frames']
    assert not out.exists()


@pytest.mark.parametrize('kind', [VideoDiT, OwnVideoDiTF2, OwnClipDenoiserF2,
                                  'mmsora.VideoDiT'],
                         ids=['class', 'subclass', 'own', 'scoped'])
def test_a_clip_denoiser_given_as_a_class_is_refused_a_picture_shape(kind):
    model = load_config(osp.join(REPO, VIDEO_DEMO)).model
    model.denoiser.type = kind
    model.latent_shape = [4, 8, 8]
    name = kind.rpartition('.')[2] if isinstance(kind, str) else kind.__name__
    with pytest.raises(UserError, match=rf"^model\.latent_shape \[4, 8, 8\] has no frame "
                       rf"axis, but this run's denoiser {name} makes clips: "):
        load_tool('infer').check_frame_axis(model, video=False)
    load_tool('infer').check_frame_axis(model, video=True)  # (C, T, H, W): fine


@pytest.mark.parametrize('kind', [DiT, 'mmsora.DiT', 'NoSuchDenoiserF2'])
def test_a_picture_denoiser_keeps_its_picture_shape(kind):
    model = load_config(osp.join(REPO, DEMO)).model
    model.denoiser.type = kind  # (an unknown name: the model's build says it)
    load_tool('infer').check_frame_axis(model, video=False)
