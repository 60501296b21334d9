"""tools/infer.py on a video model: one mp4 (and GIF) per sample with the documented
names, frame count, size and fps; bad video options give one ``error:`` line. Also
``mmsora.apis.save_videos`` on its own."""
import os.path as osp
import sys

import numpy as np
import pytest
import torch

from mmsora.apis import save_videos, video_paths
from mmsora.utils.video_io import probe_video, read_video_frames
from tests.cli_helpers import error_line
from tests.launch import run_tool
from tests.tiny_data import moving_square_clip
from tests.tiny_models import tiny_video_run_config


def run(args, repo_root, timeout=300):
    """A script of the repository (``args[0]``) run by this interpreter."""
    return run_tool([sys.executable, *args], repo_root, timeout=timeout)


def test_video_paths_and_save_videos(tmp_path):
    assert video_paths('out/a.mp4', [3, 5]) == ['out/a_000_label3.mp4',
                                                'out/a_001_label5.mp4']
    assert video_paths('clips/', [1]) == [osp.join('clips/', 'sample_000_label1.mp4')]
    assert video_paths('clips', [1], ext='.gif') == [osp.join('clips', 'sample_000_label1.gif')]
    with pytest.raises(ValueError, match='NAME.mp4'):
        video_paths('grid.png', [0])
    videos = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    paths = save_videos(videos, str(tmp_path / 'v.mp4'), fps=12.5, labels=[0, 7], gif=True)
    assert [osp.basename(p) for p in paths] == [
        'v_000_label0.mp4', 'v_001_label7.mp4', 'v_000_label0.gif', 'v_001_label7.gif']
    info = probe_video(paths[1])
    assert (info['num_frames'], info['height'], info['width']) == (5, 16, 24)
    assert info['fps'] == pytest.approx(12.5)
    with pytest.raises(ValueError, match=r'\(N, 3, T, H, W\)'):
        save_videos(videos[:, :, 0], str(tmp_path / 'x.mp4'), fps=8)
    # From Python: no labels, no label in the names (they were all '_label0'); NAME.gif
    # writes GIFs alone (it was refused, naming --out and NAME.npz); a label that is
    # not a class id is one line (an 'invalid literal for int()' traceback)
    paths = save_videos(videos, str(tmp_path / 'p.mp4'), fps=8)
    assert [osp.basename(p) for p in paths] == ['p_000.mp4', 'p_001.mp4']
    paths = save_videos(videos, str(tmp_path / 'g.gif'), fps=8, labels=[1, 2])
    assert [osp.basename(p) for p in paths] == ['g_000_label1.gif', 'g_001_label2.gif']
    assert all(osp.isfile(p) for p in paths) and not (tmp_path / 'g_000_label1.mp4').exists()
    with pytest.raises(ValueError, match=r"^clips are saved as NAME.mp4 \(files NAME_000.mp4, "
                                         r"...\), NAME.gif \(GIFs alone\) or into a folder, "
                                         r"got '.*x.npz'$"):
        save_videos(videos, str(tmp_path / 'x.npz'), fps=8)
    with pytest.raises(ValueError, match=r"^labels are class ids \(ints\) or None, got 'cat'"):
        save_videos(videos, str(tmp_path / 'c.mp4'), fps=8, labels=['cat', 'dog'])


def test_infer_writes_one_mp4_per_sample(repo_root, tmp_path):
    # A synthetic moving-square video and an unlabelled manifest (labels -1 -> class 0
    # for the one-class model).
    moving_square_clip(tmp_path / 'data', 12, 32, 48, top=8, size=12, step=3)
    # The video demo at 4 frames of 16x16 (patch 4, 2 blocks of width 32).
    config = tiny_video_run_config(tmp_path / 'tiny_video.py', repo_root, tmp_path / 'data')
    work = tmp_path / 'work'
    result = run(['tools/train.py', config, '--work-dir', str(work)], repo_root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    out = tmp_path / 'samples' / 'clip.mp4'
    result = run(['tools/infer.py', str(work), '--num-samples', '2', '--steps', '2',
                  '--out', str(out), '--gif', '--fps', '10'], repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '2 model evaluations (NFE) per batch' in result.stdout  # --steps 2, no guidance
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ['clip_000_label0.gif', 'clip_000_label0.mp4', 'clip_001_label0.gif',
                     'clip_001_label0.mp4'], names
    for name in ('clip_000_label0.mp4', 'clip_001_label0.mp4'):
        info = probe_video(str(out.parent / name))
        assert (info['num_frames'], info['height'], info['width']) == (4, 16, 16)
        assert info['fps'] == pytest.approx(10)
        assert read_video_frames(str(out.parent / name)).shape == (4, 16, 16, 3)

    # --out as a folder and the config's sample_cfg.fps (6.25) by default.
    folder = tmp_path / 'folder'
    result = run(['tools/infer.py', str(work), '--labels', '0', '--steps', '2',
                  '--out', f'{folder}/'], repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert probe_video(str(folder / 'sample_000_label0.mp4'))['fps'] == pytest.approx(6.25)

    # --precision bf16: the denoiser under autocast (samples near, not equal to, fp32's)
    arrays = {}
    for precision in ('fp32', 'bf16'):
        npz = tmp_path / f'{precision}.npz'
        result = run(['tools/infer.py', str(work), '--labels', '0', '0', '--steps', '2',
                      '--precision', precision, '--out', str(npz)], repo_root)
        assert result.returncode == 0, result.stderr[-3000:]
        arrays[precision] = np.load(npz)['arr_0'].astype(np.int16)
    diff = np.abs(arrays['bf16'] - arrays['fp32'])
    assert 0 < diff.max() and diff.mean() < 4, (diff.max(), diff.mean())

    bad = run(['tools/infer.py', str(work), '--fps', '0'], repo_root)
    assert '--fps must be > 0' in error_line(bad)
    bad = run(['tools/infer.py', str(work), '--out', str(tmp_path / 'grid.png')], repo_root)
    assert 'NAME.mp4' in error_line(bad)
    bad = run(['tools/infer.py', str(work), '--labels', '1'], repo_root)
    assert 'out of range' in error_line(bad)
