"""Walk-through X (a Latte / Open-Sora user sampling video models): how samples are
saved.

3. A pixel-space VideoDiT at 15x15 ended its training run at the first sample hook
   (H.264 needs an even size; pad_odd reached by no flag or key), and tools/infer.py
   failed the same way once it had sampled: clips of an odd size are padded by one
   row / column of edge pixels, with a note; a sample hook's failure to save never
   ends a run.
7. tools/infer.py --upscale / --nrow on a video model, --fps on an image model, were
   ignored without a word: refused before the weights load.
11. save_videos given (N, T, 3, H, W) clips (Latte's layout) told to add a VAE.
"""
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmsora.apis import save_videos
from mmsora.utils.video_io import probe_video, read_video_frames
from tests.cli_helpers import refused
from tests.tiny_data import LineLogger, moving_square_clip
from tests.tiny_models import VIDEO_DEMO, tiny_video_run_config

pytestmark = pytest.mark.usefixtures('kept_environ')

IMAGE_CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
PADDED = 'note: the clips are 15x15: padded to 16x16 (one row / column of edge pixels) ' \
         'for H.264'


def odd_run(repo_root, tmp_path):
    """Train the 15x15 model for 2 iterations (the hook samples at 2); its work dir."""
    from tools import train
    moving_square_clip(tmp_path / 'data', 8, 24, 24, top=6, size=8, step=2)
    # The video demo at 4 frames of 15x15 (patch 3, 2 blocks of width 32).
    config = tiny_video_run_config(tmp_path / 'odd_video.py', repo_root, tmp_path / 'data',
                                   size=15, patch_size=3, sample_hook=True)
    work = tmp_path / 'work'
    train.main([config, '--work-dir', str(work)])
    return work


# --------------------------------------------------------------------------- #
#  3. Odd frame sizes                                                          #
# --------------------------------------------------------------------------- #
def test_odd_clips_are_padded_by_the_hook_and_by_infer(repo_root, tmp_path, capsys):
    from tools import infer
    work = odd_run(repo_root, tmp_path)
    assert osp.isfile(work / 'iter_2.pth')  # the run was not ended by the hook
    sample = next((work).glob('*/samples/iter_2/sample_000_label0.mp4'))
    info = probe_video(str(sample))
    assert (info['num_frames'], info['height'], info['width']) == (4, 16, 16)
    assert capsys.readouterr().err.count(PADDED) == 1

    out = tmp_path / 'clips' / 'odd.mp4'
    infer.main([str(work), '--num-samples', '2', '--steps', '2', '--out', str(out),
                '--gif'])
    printed = capsys.readouterr()
    assert printed.err.count(PADDED) <= 1  # once a process (said above, in this one)
    frames = read_video_frames(str(tmp_path / 'clips' / 'odd_001_label0.mp4'))
    assert frames.shape == (4, 16, 16, 3)
    # the added row and column repeat the edge (as near as H.264 keeps them)
    diff = np.abs(frames[:, 15].astype(int) - frames[:, 14].astype(int))
    assert diff.mean() < 8, diff.mean()
    from PIL import Image
    gif = Image.open(tmp_path / 'clips' / 'odd_001_label0.gif')
    assert gif.size == (15, 15)  # a GIF takes any size: left as sampled


def test_save_videos_pads_an_odd_size_with_one_note(tmp_path, capsys):
    videos = torch.rand(2, 3, 3, 9, 12) * 2 - 1
    paths = save_videos(videos, str(tmp_path / 'a.mp4'), fps=8)
    paths += save_videos(videos, str(tmp_path / 'b.mp4'), fps=8)
    for path in paths:
        info = probe_video(path)
        assert (info['num_frames'], info['height'], info['width']) == (3, 10, 12)
    err = capsys.readouterr().err
    assert err.count('note: the clips are 12x9: padded to 12x10 (one row / column of edge '
                     'pixels) for H.264') == 1, err
    save_videos(videos[..., :8, :], str(tmp_path / 'c.mp4'), fps=8)  # even: no note
    assert 'padded' not in capsys.readouterr().err


def test_a_hook_that_cannot_save_its_clips_does_not_end_the_run(tmp_path, monkeypatch):
    import mmsora.apis.video
    from mmsora.engine.hooks.sample_visualization_hook import SampleVisualizationHook

    def full_disk(path, *args, **kwargs):
        raise OSError(28, 'No space left on device', path)

    monkeypatch.setattr(mmsora.apis.video, 'write_video', full_disk)
    logger, pictures = LineLogger(), []
    runner = SimpleNamespace(
        cfg={'sample_cfg': dict(fps=8)}, log_dir=str(tmp_path), logger=logger,
        visualizer=SimpleNamespace(add_image=lambda *a, **k: pictures.append(a)))
    hook = SampleVisualizationHook(interval=2, num_samples=2)
    samples = torch.rand(2, 3, 2, 8, 8) * 2 - 1
    assert hook._log(runner, samples, [0, 1], step=4) is samples
    assert len(pictures) == 1  # the filmstrip still went to the visualizer
    warnings = [text for kind, text in logger.lines if kind == 'warning']
    assert len(warnings) == 1 and warnings[0].startswith(
        'Iter(sample) [4] the samples were not saved (training goes on): OSError: ')
    assert 'No space left on device' in warnings[0]


# --------------------------------------------------------------------------- #
#  7. infer.py options the model's kind does not use                           #
# --------------------------------------------------------------------------- #
def test_grid_options_on_a_video_model_are_refused(repo_root, tmp_path, monkeypatch):
    from tools import infer

    def no_weights(*args, **kwargs):
        raise AssertionError('the weights were loaded before the options were checked')

    monkeypatch.setattr('mmsora.apis.init_model', no_weights)
    config = osp.join(repo_root, VIDEO_DEMO)
    out = str(tmp_path / 'v.mp4')
    assert refused(infer.main, [config, '--upscale', '4', '--nrow', '2', '--out', out]) == (
        '--nrow / --upscale: for the picture grid of image models; this model makes clips '
        '(one mp4 per sample, at its own size)')
    assert refused(infer.main, [config, '--upscale', '4']).startswith('--upscale: ')
    image = osp.join(repo_root, IMAGE_CONFIG)
    assert refused(infer.main, [image, '--fps', '4', '--out', str(tmp_path / 'g.png')]) == (
        '--fps: for video models; this model makes pictures (model.latent_shape has no '
        'frame axis)')
    assert refused(infer.main, [image, '--fps', '4', '--gif']).startswith('--fps / --gif: ')


# --------------------------------------------------------------------------- #
#  11. Latte's clip layout                                                     #
# --------------------------------------------------------------------------- #
def test_save_videos_names_the_latte_layout(tmp_path):
    clips = torch.rand(2, 16, 3, 32, 32) * 2 - 1  # (N, T, 3, H, W)
    with pytest.raises(ValueError) as info:
        save_videos(clips, str(tmp_path / 'x.mp4'), fps=8)
    assert str(info.value) == (
        'expected clips (N, 3, T, H, W), got shape (2, 16, 3, 32, 32): they look like '
        '(N, T, 3, H, W) clips; pass x.permute(0, 2, 1, 3, 4)')
    with pytest.raises(ValueError, match='latent models need a VAE'):
        save_videos(torch.rand(2, 4, 4, 8, 8), str(tmp_path / 'x.mp4'), fps=8)
    assert not list(tmp_path.iterdir())


def test_mass_sampling_sample_dir_pads_odd_clips(tmp_path, capsys):
    """infer --out X.npz --sample-dir DIR on an odd-size video model: the mp4s were
    refused after the first batch had been drawn."""
    from mmsora.apis.mass_sampling import _save_files
    samples = np.random.default_rng(0).integers(0, 256, (2, 3, 9, 12, 3), np.uint8)
    _save_files(str(tmp_path / 'dir'), range(4, 6), samples, fps=8)
    for i in (4, 5):
        info = probe_video(str(tmp_path / 'dir' / f'00000{i}.mp4'))
        assert (info['num_frames'], info['height'], info['width']) == (3, 10, 12)
    assert capsys.readouterr().err.count(
        f'note: the clips are 12x9: their mp4s in {tmp_path / "dir"} are padded to 12x10 '
        '(one row / column of edge pixels) for H.264; the .npz keeps the sampled size') == 1
