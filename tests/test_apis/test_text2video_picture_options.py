"""text2video's picture options, found by a user walk-through: a ``--checkpoint`` beside
an mmsora checkpoint (dropped: the RUN's own weights were sampled), options a diffusers
pipeline does not take (dropped without a word, though the docs say they are refused),
the mmsora progress bar (no label, counting steps), the Stable Cascade folders named one
failed run at a time, and the hints between ``mmsora:`` and ``diffusers:``."""
import importlib
import json
import os.path as osp
import types

import diffusers
import numpy as np
import pytest
import torch

from mmsora.apis import init_model
from mmsora.apis.text2video import Shot, build_pictures
from mmsora.apis.text2video.pictures import DiffusersPictures
from mmsora.utils.cli import UserError, run_cli
from tests.cli_helpers import load_tool
from tests.conftest import REPO_ROOT

# The shapes demo's DiT, shrunk: 16x16 pixels, 2 classes, one block of width 32.
TINY_DIT = '''_base_ = [{base!r}]
model = dict(denoiser=dict(hidden_size=32, depth=1, num_heads=2, num_classes=2),
             num_classes=2)
sample_cfg = dict(sampler='ddim', num_steps=2, cfg_scale=1.0)
'''
CASCADE = osp.join(REPO_ROOT, 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')


def shots(n):
    return [Shot([], prompt=f'prompt {i}', index=i) for i in range(n)]


def tiny_checkpoint(folder, seed):
    """A random tiny DiT saved as a run's checkpoint with its config in ``meta.cfg``."""
    from mmengine.config import Config

    from mmsora.registry import MODELS
    importlib.import_module('mmsora.models')  # (registers the modules)
    config = folder / 'tiny_dit.py'
    config.write_text(TINY_DIT.format(
        base=osp.join(REPO_ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')))
    cfg = Config.fromfile(str(config))
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    state = {f'denoiser.{k}': v for k, v in model.denoiser.state_dict().items()}
    checkpoint = folder / 'iter_1.pth'
    torch.save(dict(state_dict=state, meta=dict(cfg=cfg.pretty_text)), checkpoint)
    return str(config), str(checkpoint)


@pytest.fixture(scope='module')
def two_runs(tmp_path_factory):
    """Two tiny DiT runs of other weights: (config, checkpoint) of each."""
    return [tiny_checkpoint(tmp_path_factory.mktemp(f'run{i}'), seed=i) for i in range(2)]


def tool_error(tmp_path, capsys, *args):
    """The one line tools/text2video.py stops with (run in this process)."""
    story = tmp_path / 'story.txt'
    story.write_text('Hello there.')
    tool = load_tool('text2video')
    assert run_cli(lambda: tool.main([str(story), '--out', str(tmp_path / 'o.mp4'),
                                      '--speech', 'none', '--default-malloc', *args])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- #
#                  1. --checkpoint beside an mmsora checkpoint                #
# --------------------------------------------------------------------------- #
def test_a_checkpoint_beside_a_checkpoint_run_is_refused(two_runs, tmp_path, capsys):
    (_, image_run), (_, other) = two_runs
    with pytest.raises(UserError) as e:
        build_pictures(f'mmsora:{image_run}', checkpoint=other, device='cpu')
    assert str(e.value) == (
        f'--checkpoint {other} beside --pictures mmsora:{image_run}, itself a checkpoint '
        '(its weights are sampled): give one of them, or a config file or work dir as RUN '
        'with --checkpoint')
    line = tool_error(tmp_path, capsys, '--pictures', f'mmsora:{image_run}', '--checkpoint',
                      other, '--device', 'cpu')
    assert line.startswith(f'error: --checkpoint {other} beside --pictures mmsora:'), line


def test_a_config_with_a_checkpoint_samples_that_checkpoint(two_runs):
    """The other way to give them (config + --checkpoint) takes the checkpoint's weights."""
    (config, _), (_, other) = two_runs
    backend = build_pictures(f'mmsora:{config}', checkpoint=other, device='cpu')
    assert backend.model.loaded_from == other
    expected = torch.load(other, weights_only=True)['state_dict']
    for key, value in backend.model.denoiser.state_dict().items():
        assert torch.equal(value, expected[f'denoiser.{key}']), key


# --------------------------------------------------------------------------- #
#             2. options a diffusers pipeline does not take: refused          #
# --------------------------------------------------------------------------- #
@pytest.fixture(scope='module')
def ddpm_folder(tmp_path_factory):
    """A tiny unconditional DDPMPipeline saved in a folder."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=('DownBlock2D',) * 2,
                       up_block_types=('UpBlock2D',) * 2, norm_num_groups=8)
    folder = tmp_path_factory.mktemp('ddpm') / 'pipe'
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(
        str(folder))
    return str(folder)


@pytest.mark.parametrize('option, expected', [
    (dict(labels=[3]), '--labels: DDPMPipeline takes no class labels (not class-conditional); '
                       'leave --labels out'),
    (dict(guidance_scale=4.0), '--cfg-scale: DDPMPipeline takes no guidance_scale (it samples '
                               'without guidance); leave --cfg-scale out')])
def test_options_an_unconditional_pipeline_does_not_take_are_refused_before_it_loads(
        ddpm_folder, monkeypatch, option, expected):
    def load(*args, **kwargs):
        raise AssertionError('loaded')
    monkeypatch.setattr(diffusers.DiffusionPipeline, 'from_pretrained', load)
    with pytest.raises(UserError) as e:
        build_pictures(f'diffusers:{ddpm_folder}', device='cpu', **option)
    assert str(e.value) == expected


def test_the_tool_refuses_labels_and_cfg_scale_for_an_unconditional_pipeline(
        ddpm_folder, tmp_path, capsys):
    line = tool_error(tmp_path, capsys, '--pictures', f'diffusers:{ddpm_folder}',
                      '--labels', '3', '--cfg-scale', '4', '--device', 'cpu')
    assert line == ('error: --labels: DDPMPipeline takes no class labels (not '
                    'class-conditional); leave --labels out')
    line = tool_error(tmp_path, capsys, '--pictures', f'diffusers:{ddpm_folder}',
                      '--cfg-scale', '4', '--device', 'cpu')
    assert line.startswith('error: --cfg-scale: DDPMPipeline takes no guidance_scale'), line


class StepFreePipeline:
    """A picture pipeline outside diffusers (its class is known once it loads) that
    takes neither steps, a generator, guidance nor labels."""

    def to(self, device):
        return self

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, output_type='pil'):
        return types.SimpleNamespace(images=np.full((1, 4, 4, 3), 0.5, np.float32))


class ClassPipeline(StepFreePipeline):
    """A class-conditional one with guidance and steps (DiTPipeline's arguments)."""

    def __init__(self):
        self.calls = []

    def __call__(self, class_labels, guidance_scale=4.0, generator=None,
                 num_inference_steps=50, output_type='pil'):
        self.calls.append(dict(class_labels=class_labels, guidance_scale=guidance_scale,
                               num_inference_steps=num_inference_steps))
        return types.SimpleNamespace(images=np.zeros((1, 4, 4, 3), np.float32))


def loaded_as(tmp_path, monkeypatch, pipe):
    folder = tmp_path / type(pipe).__name__
    folder.mkdir()
    (folder / 'model_index.json').write_text(json.dumps(
        {'_class_name': type(pipe).__name__, '_diffusers_version': diffusers.__version__}))
    monkeypatch.setattr(diffusers.DiffusionPipeline, 'from_pretrained',
                        lambda *args, **kwargs: pipe)
    return str(folder)


def test_options_are_checked_against_the_loaded_pipeline(tmp_path, monkeypatch):
    folder = loaded_as(tmp_path, monkeypatch, StepFreePipeline())
    with pytest.raises(UserError, match=r'^--steps: StepFreePipeline takes no '
                                        r'num_inference_steps; leave --steps out$'):
        DiffusersPictures(folder, num_steps=2, device='cpu')
    with pytest.raises(UserError, match=r'^--labels: StepFreePipeline takes no class labels '
                                        r'\(it draws from the prompt\)'):
        DiffusersPictures(folder, labels=[1], device='cpu')
    # nothing given: it samples, called with only what it takes (steps and a generator
    # were passed to every pipeline: a TypeError here)
    picture = DiffusersPictures(folder, device='cpu').render(shots(1)[0], (8, 8))
    assert picture.shape == (4, 4, 3) and (picture == 128).all()


def test_a_class_pipeline_takes_its_options(tmp_path, monkeypatch):
    pipe = ClassPipeline()
    folder = loaded_as(tmp_path, monkeypatch, pipe)
    pictures = DiffusersPictures(folder, labels=[5, 7], guidance_scale=1.5, device='cpu')
    for shot in shots(3):
        pictures.render(shot, (8, 8))
    assert pipe.calls == [dict(class_labels=[y], guidance_scale=1.5, num_inference_steps=30)
                          for y in (5, 7, 5)]
    DiffusersPictures(folder, num_steps=4, device='cpu').render(shots(1)[0], (8, 8))
    assert pipe.calls[-1] == dict(class_labels=[0], guidance_scale=4.0, num_inference_steps=4)


# --------------------------------------------------------------------------- #
#                 3. the mmsora progress bar: 'pictures', over shots          #
# --------------------------------------------------------------------------- #
def test_the_mmsora_progress_bar_counts_shots_under_its_name(two_runs, capsys):
    _, checkpoint = two_runs[0]
    backend = build_pictures(f'mmsora:{checkpoint}', seed=5, device='cpu', batch_size=2)
    pictures = backend.render_all(shots(3), (64, 36), progress=True)
    bars = capsys.readouterr().err.replace('\r', '\n').splitlines()
    shown = [line for line in bars if line.strip()]
    assert shown and all(line.startswith('pictures:') for line in shown), shown
    assert '3/3' in shown[-1] and not any('2/2' in line for line in shown), shown
    # batches of 2 (3 shots: 2 + 1) give what one batch of 8 gives, seed by seed
    one_batch = build_pictures(f'mmsora:{checkpoint}', seed=5, device='cpu')
    np.testing.assert_array_equal(
        np.stack(one_batch.render_all(shots(3), (64, 36), progress=False)),
        np.stack(pictures))


# --------------------------------------------------------------------------- #
#          4. every missing Stable Cascade folder named with its key          #
# --------------------------------------------------------------------------- #
@pytest.fixture
def not_built(monkeypatch):
    from mmsora.registry import MODELS

    def built(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(MODELS, 'build', built)


def test_the_missing_vae_and_text_encoder_folders_are_named_together(tmp_path, monkeypatch,
                                                                     not_built):
    monkeypatch.chdir(tmp_path)  # (the config's folders are relative to the repository)
    with pytest.raises(FileNotFoundError) as e:
        init_model(CASCADE, str(tmp_path / 'iter_1.pth'))
    assert str(e.value) == (
        "StableCascadeDecoder folder 'checkpoints/stable-cascade-tiny' does not exist, nor "
        "does text encoder folder 'checkpoints/clip-tiny' (give local folders: --cfg-options "
        'model.vae.pretrained_path=DIR model.text_encoder.pretrained_path=DIR; nothing is '
        'downloaded)')


def test_a_missing_text_encoder_folder_is_named_before_the_model_is_built(tmp_path,
                                                                          not_built):
    with pytest.raises(FileNotFoundError) as e:
        init_model(CASCADE, str(tmp_path / 'iter_1.pth'),
                   cfg_options=[f'model.vae.pretrained_path={tmp_path}',
                                f'model.text_encoder.pretrained_path={tmp_path / "clip"}'])
    assert str(e.value) == (
        f"text encoder folder {str(tmp_path / 'clip')!r} does not exist (give a local folder: "
        '--cfg-options model.text_encoder.pretrained_path=DIR; nothing is downloaded)')
    with pytest.raises(FileNotFoundError) as e:  # the VAE's alone, as before
        init_model(CASCADE, str(tmp_path / 'iter_1.pth'),
                   cfg_options=[f'model.vae.pretrained_path={tmp_path / "sc"}',
                                f'model.text_encoder.pretrained_path={tmp_path}'])
    assert str(e.value) == (
        f"StableCascadeDecoder folder {str(tmp_path / 'sc')!r} does not exist (give a local "
        'folder: --cfg-options model.vae.pretrained_path=DIR; nothing is downloaded)')


# --------------------------------------------------------------------------- #
#                 5. hints between mmsora: and diffusers:                     #
# --------------------------------------------------------------------------- #
def test_an_mmsora_run_given_to_diffusers_is_pointed_to_mmsora(two_runs):
    config, checkpoint = two_runs[0]
    work_dir = osp.dirname(checkpoint)
    with pytest.raises(UserError) as e:
        build_pictures(f'diffusers:{work_dir}', device='cpu')
    assert str(e.value) == (f'{work_dir} is not a diffusers pipeline folder (no '
                            'model_index.json); an mmsora run is sampled with --pictures '
                            f'mmsora:{work_dir}')
    with pytest.raises(UserError, match=r'no pipeline folder .*; an mmsora run is sampled '
                                        r'with --pictures mmsora:.*iter_1\.pth$'):
        build_pictures(f'diffusers:{checkpoint}', device='cpu')


def test_another_folder_given_to_diffusers_gets_no_mmsora_hint(tmp_path):
    (tmp_path / 'notes.txt').write_text('')
    with pytest.raises(UserError) as e:
        build_pictures(f'diffusers:{tmp_path}', device='cpu')
    assert str(e.value) == f'{tmp_path} is not a diffusers pipeline folder (no model_index.json)'


def test_a_diffusers_folder_given_to_mmsora_is_pointed_to_diffusers(ddpm_folder):
    with pytest.raises(UserError) as e:
        build_pictures(f'mmsora:{ddpm_folder}', device='cpu')
    assert str(e.value) == (f'{ddpm_folder} holds a diffusers pipeline (model_index.json), '
                            f'not an mmsora run: --pictures diffusers:{ddpm_folder}')


def test_labels_out_of_range_are_named_as_infer_names_them(two_runs):
    """One check for tools/infer.py's and text2video's --labels (mmsora.apis.inference.
    check_label_ids): text2video said '1 classes' and wrote the rule a second time."""
    (_, run), _ = two_runs
    model_classes = build_pictures(f'mmsora:{run}', device='cpu').model.num_classes
    with pytest.raises(UserError, match=rf'^--labels \[{model_classes}\] out of range: the '
                                        rf'model has {model_classes} classes$'):
        build_pictures(f'mmsora:{run}', labels=[0, model_classes], device='cpu')
