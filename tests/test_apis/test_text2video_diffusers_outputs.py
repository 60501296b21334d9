"""--pictures diffusers:DIR with pipelines that give no pictures: Stable Cascade's
pipelines are refused before anything loads (the prior sampled, then stopped on an
AttributeError; the decoder and combined ones failed inside diffusers), and an output
without ``images`` or ``frames`` is one line naming the pipeline.

The folders hold only ``model_index.json``; the pipeline that loads is a fake.
"""
import json
import types

import diffusers
import numpy as np
import pytest

from mmsora.apis.text2video import build_pictures
from mmsora.apis.text2video.pictures import DiffusersPictures
from mmsora.apis.text2video.segmentation import Shot
from mmsora.utils.cli import UserError


def pipeline_folder(tmp_path, class_name):
    folder = tmp_path / class_name
    folder.mkdir()
    (folder / 'model_index.json').write_text(json.dumps(
        {'_class_name': class_name, '_diffusers_version': diffusers.__version__}))
    return str(folder)


@pytest.mark.parametrize('class_name', ['StableCascadePriorPipeline',
                                        'StableCascadeDecoderPipeline',
                                        'StableCascadeCombinedPipeline'])
def test_stable_cascade_pipelines_are_refused_before_loading(tmp_path, monkeypatch,
                                                             class_name):
    def load(*args, **kwargs):
        raise AssertionError('loaded')
    monkeypatch.setattr(diffusers.DiffusionPipeline, 'from_pretrained', load)
    folder = pipeline_folder(tmp_path, class_name)
    with pytest.raises(UserError) as e:
        DiffusersPictures(folder, device='cpu')
    assert str(e.value) == (
        f'{folder} holds a {class_name}, which gives no pictures here: sample a Stable '
        'Cascade run of mmsora instead (--pictures mmsora:RUN, with its Stage B + A as '
        'model.vae)')
    with pytest.raises(UserError, match=r'--pictures mmsora:RUN'):
        build_pictures(f'diffusers:{folder}', device='cpu')


class FakePipeline:
    """A text pipeline whose output is ``output`` (a diffusers output class's fields)."""

    def __init__(self, **output):
        self.output = output

    def to(self, device):
        return self

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, num_inference_steps=30, output_type='pil', generator=None):
        return types.SimpleNamespace(**self.output)


def fake_pictures(tmp_path, monkeypatch, **output):
    pipe = FakePipeline(**output)
    monkeypatch.setattr(diffusers.DiffusionPipeline, 'from_pretrained',
                        lambda *args, **kwargs: pipe)
    return DiffusersPictures(pipeline_folder(tmp_path, 'FakePipeline'), device='cpu')


def test_an_output_without_pictures_names_the_pipeline(tmp_path, monkeypatch):
    pictures = fake_pictures(tmp_path, monkeypatch, image_embeddings=np.zeros((1, 16, 4, 4)))
    with pytest.raises(UserError, match=r'^FakePipeline gives a SimpleNamespace with neither '
                                        r'images nor frames: not a picture pipeline; give a '
                                        r'text-to-image or text-to-video pipeline folder$'):
        pictures.render(Shot([], prompt='a red disk', index=0), (32, 32))


@pytest.mark.parametrize('field', ['images', 'frames'])
def test_pictures_and_clips_still_come_out(tmp_path, monkeypatch, field):
    shape = (1, 4, 8, 8, 3) if field == 'frames' else (1, 8, 8, 3)
    pictures = fake_pictures(tmp_path, monkeypatch, **{field: np.full(shape, 0.5)})
    pic = pictures.render(Shot([], prompt='a red disk', index=0), (8, 8))
    assert pic.dtype == np.uint8 and pic.shape == shape[1:] and (pic == 128).all()
