"""sample_images and its neighbours as a user calls them from Python (walk-through G6):
pathlib.Path for every path, sampling arguments checked up front in one line each
(they were 'numpy.int64 object is not iterable', a torch.cat error, 'too many
dimensions str', ...), and integer pixels refused by save_image_grid (uint8 was taken
as values in [-1, 1]: a white grid)."""
import functools
import os.path as osp
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsora.apis import find_run, init_model, load_weights, sample_images, save_image_grid
from mmsora.apis.inference import read_prompt_file
from tests.conftest import REPO_ROOT
from tests.tiny_models import DEMO, TINY_DEMO_OPTIONS

pytestmark = pytest.mark.usefixtures('malloc_calls')


@pytest.fixture(scope='module')
def tiny():
    """The tiny demo model (4 classes, 8x8 pictures, no VAE), random weights."""
    model, _ = init_model(osp.join(REPO_ROOT, DEMO), checkpoint=False,
                          cfg_options=TINY_DEMO_OPTIONS)
    return model


@pytest.fixture
def counted(tiny, monkeypatch):
    """The tiny model, its ``sample`` calls recorded (its signature kept)."""
    calls = []
    real = tiny.sample

    @functools.wraps(real)
    def sample(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny, 'sample', sample)
    return tiny, calls


# ---------------------------------------------------------------------------
# (1) pathlib.Path wherever a path is taken
# ---------------------------------------------------------------------------

def test_paths_may_be_pathlib_paths(tmp_path, tiny):
    config = Path(REPO_ROOT) / DEMO
    assert find_run(config) == (str(config), None)
    model, cfg = init_model(config, checkpoint=False, cfg_options=TINY_DEMO_OPTIONS)
    assert cfg.filename == str(config)
    weights = tmp_path / 'dit.pt'
    torch.save(tiny.denoiser.state_dict(), weights)
    model, _ = init_model(config, weights, cfg_options=TINY_DEMO_OPTIONS)
    assert model.loaded_from == str(weights)
    assert all(torch.equal(a, b) for a, b in zip(model.denoiser.state_dict().values(),
                                                 tiny.denoiser.state_dict().values()))
    load_weights(model, weights)
    assert model.loaded_from == str(weights)
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('a bike\n# not this\n\na road\n')
    assert read_prompt_file(prompts) == ['a bike', 'a road']
    out = save_image_grid(torch.zeros(2, 3, 4, 4), tmp_path / 'grid' / 'g.png')
    assert out == str(tmp_path / 'grid' / 'g.png') and osp.getsize(out) > 0


# ---------------------------------------------------------------------------
# (2) sample_images' arguments
# ---------------------------------------------------------------------------

def test_a_numpy_int_seed_is_an_int_seed(tiny):
    want = sample_images(tiny, [0, 1], seeds=3, num_steps=2)
    assert torch.equal(sample_images(tiny, [0, 1], seeds=np.int64(3), num_steps=2), want)
    assert torch.equal(sample_images(tiny, np.array([0, 1]), seeds=[3, 4], num_steps=2), want)
    with pytest.raises(ValueError, match=r'^seeds must be one whole number per sample '
                                         r'\(or an int s: seeds s, s \+ 1, ...\), got True$'):
        sample_images(tiny, [0], seeds=True, num_steps=2)  # (a bool is no seed)
    with pytest.raises(ValueError, match=r'^seeds must be one whole number per sample .*got 2.5$'):
        sample_images(tiny, [0], seeds=2.5, num_steps=2)


@pytest.mark.parametrize('labels, message', [
    (3, r'^labels must be a sequence of class ids, one per sample \(labels=\[3\] for one '
        r'sample of class 3\), got 3$'),
    (np.int64(3), r'^labels must be a sequence of class ids, one per sample .*got '
                  r'np\.int64\(3\)$'),
    (torch.tensor(3), r'^labels must be a sequence of class ids'),
    ('1', r'^labels must be a sequence of class ids'),
    ([], r'^labels is empty: give one class id per sample$'),
    (torch.tensor([[0, 1]]), r'^labels must be one class id per sample \(a 1-D sequence\), '
                             r'got shape \(1, 2\)$'),
    ([[0], [1, 2]], r'^labels must be one class id per sample \(a 1-D sequence\), got '
                    r'\[\[0\], \[1, 2\]\]$'),
    (['1'], r"^labels \['1'\] are not class ids \(whole numbers\): the model has 4 classes$"),
    ([None], r'^labels \[None\] are not class ids'),
    ([0.5], r'^labels \[0.5\] are not class ids'),
])
def test_labels_that_are_not_class_ids_are_one_line(counted, labels, message):
    model, calls = counted
    with pytest.raises(ValueError, match=message):
        sample_images(model, labels, seeds=0, num_steps=2)
    assert calls == []


def test_every_label_is_checked_before_the_first_batch(counted):
    model, calls = counted
    # (the model checks each batch's: batch 1 was drawn, then batch 2 refused)
    with pytest.raises(ValueError, match=r'^labels \[7\] out of range: the model has 4 '
                                         r'classes$'):
        sample_images(model, [0, 1, 7], seeds=0, num_steps=2, batch_size=2)
    assert calls == []
    assert len(sample_images(model, [0, 1, 3], seeds=0, num_steps=2, batch_size=2)) == 3
    assert len(calls) == 2


@pytest.mark.parametrize('settings, message', [
    (dict(num_steps=5.0), r'^num_steps must be a whole number in \[1, 1000\] .*got 5.0$'),
    (dict(num_steps=0), r'^num_steps must be in \[1, 1000\]'),
    (dict(sampler='ddim', eta=2), r'^eta=2 is not a number in \[0, 1\]'),
    (dict(sampler='dim'), r"^unknown sampler 'dim'"),
    (dict(precision='fp8'), r"^precision='fp8': sampling precisions are"),
    (dict(cfg_scale='4'), r"^cfg_scale must be a finite number \(the guidance scale; 1: "
                          r"none\), got '4'$"),
    (dict(cfg_scale=float('nan')), r'^cfg_scale must be a finite number .*got nan$'),
    (dict(cfg_scale=True), r'^cfg_scale must be a finite number .*got True$'),
])
def test_sampling_settings_are_checked_before_sampling(counted, settings, message):
    model, calls = counted
    with pytest.raises(ValueError, match=message):
        sample_images(model, [0, 1], seeds=0, **settings)
    assert calls == []  # (refused by the objective once the model was sampling)


def test_good_settings_still_sample(counted):
    model, calls = counted
    out = sample_images(model, [0], seeds=0, num_steps=np.int64(2), cfg_scale=np.float32(1.5))
    assert out.shape == (1, 3, 8, 8) and model.diffusion.last_nfe == 2
    assert calls[-1]['cfg_scale'] == 1.5


def test_empty_prompts_are_one_line():
    class Text(torch.nn.Module):
        text_conditioned = True

        def sample(self, seeds, progress, prompts=None, **settings):
            raise AssertionError('not reached')

    with pytest.raises(ValueError, match=r'^prompts is empty: give one caption per sample$'):
        sample_images(Text(), prompts=[], seeds=0)


class TextRecorder(torch.nn.Module):
    """A text model that records the prompts sample_images gives it."""
    text_conditioned = True

    def __init__(self):
        super().__init__()
        self.calls = []

    def sample(self, seeds, progress, prompts=None, **settings):
        self.calls.append(prompts)
        return torch.zeros(len(seeds), 3, 2, 2)


@pytest.mark.parametrize('prompts, message', [
    (3, r"^prompts must be a list of captions \(str\), one per sample \(prompts=\['a red "
        r"bike'\] for one sample\), got 3$"),
    (np.int64(3), r'^prompts must be a list of captions .*got np\.int64\(3\)$'),
    (b'a bike', r"^prompts must be a list of captions .*got b'a bike'$"),
    (['a bike', None], r'^prompts\[1\] is None, not a caption: prompts must be a list of '
                       r'str, one per sample$'),
])
def test_prompts_that_are_not_captions_are_one_line(prompts, message):
    """prompts=3 was 'int object is not iterable'; the line is LatentDiffusion.sample's
    (one check for both)."""
    text = TextRecorder()
    with pytest.raises(ValueError, match=message):
        sample_images(text, prompts=prompts, seeds=0)
    assert text.calls == []  # before the first batch
    sample_images(text, prompts=('a bike', 'a road'), seeds=0, batch_size=1)
    assert text.calls == [['a bike'], ['a road']]


# ---------------------------------------------------------------------------
# (3) save_image_grid takes floats in [-1, 1]
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64, torch.bool])
def test_integer_pixels_are_refused(tmp_path, dtype):
    pixels = torch.full((2, 3, 4, 4), 128).to(dtype)
    with pytest.raises(ValueError, match=r'^pictures are floats in \[-1, 1\], got torch\.\w+; '
                                         r'pass uint8 pixels in \[0, 255\] as '
                                         r'x\.float\(\) / 127\.5 - 1$'):
        save_image_grid(pixels, tmp_path / 'grid.png')
    assert not (tmp_path / 'grid.png').exists()
    # what the message says to do gives the grey the pixels were
    out = save_image_grid(torch.full((2, 3, 4, 4), 128, dtype=torch.uint8).float() / 127.5 - 1,
                          tmp_path / 'grid.png')
    from PIL import Image
    grid = np.asarray(Image.open(out))
    assert (grid[2:6, 2:6] == 128).all()
