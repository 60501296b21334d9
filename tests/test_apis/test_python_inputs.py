"""What a user calling mmsora from Python passes: pathlib.Path wherever a str path is
taken, uint8 pixels where clips in [-1, 1] are wanted, and one --cfg-options string."""
import os
import os.path as osp
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmsora.apis import init_model
from mmsora.apis.text2video import Composer, text_to_video
from mmsora.apis.text2video.pipeline import check_options
from mmsora.apis.video import is_clip_folder, save_videos, video_paths
from mmsora.datasets import LatentStoreWriter, PackedLatentDataset
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.video_io import read_video_frames
from tests.tiny_models import DEMO


def clips(n=2):
    """(n, 3, 2, 8, 8) clips in [-1, 1]."""
    return torch.rand(n, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


# ---------------------------------------------------------------------------
# (1) pathlib.Path arguments
# ---------------------------------------------------------------------------

def test_save_videos_takes_a_path_file_name_and_a_path_folder(tmp_path):
    written = save_videos(clips(), tmp_path / 'out' / 'py.mp4', fps=4)
    assert written == [str(tmp_path / 'out' / f'py_{i:03d}.mp4') for i in range(2)]
    assert all(isinstance(p, str) and osp.getsize(p) > 0 for p in written)
    assert read_video_frames(written[0]).shape[0] == 2          # both frames

    folder = tmp_path / 'clips'                                  # (no suffix: a folder)
    assert is_clip_folder(folder) and not is_clip_folder(tmp_path / 'a.gif')
    written = save_videos(clips(), folder, fps=4, labels=[3, 5], gif=True)
    assert written == [str(folder / 'sample_000_label3.mp4'),
                       str(folder / 'sample_001_label5.mp4'),
                       str(folder / 'sample_000_label3.gif'),
                       str(folder / 'sample_001_label5.gif')]
    assert all(osp.getsize(p) > 0 for p in written)
    gifs = save_videos(clips(1), tmp_path / 'alone.gif', fps=4)  # GIFs alone
    assert gifs == [str(tmp_path / 'alone_000.gif')] and osp.exists(gifs[0])
    assert video_paths(Path('d/x.mp4'), [None]) == [osp.join('d', 'x_000.mp4')]
    with pytest.raises(ValueError, match='clips are saved as NAME.mp4'):
        video_paths(Path('d/x.avi'), [None])


def test_text_to_video_takes_a_path(tmp_path):
    out = tmp_path / 't2v.mp4'
    composer = Composer((64, 36), fps=4, zoom=1.0, subtitles=False)
    result = text_to_video('The red disk rolls away.', out, speech='none', composer=composer,
                           progress=False)
    assert result.path == str(out) and isinstance(result.path, str)
    assert out.stat().st_size > 0
    check_options(tmp_path / 'ok.mp4')
    with pytest.raises(UserError, match=r'^--out must name an \.mp4 file, got'):
        check_options(tmp_path / 'story.avi')
    with pytest.raises(UserError, match='is a folder; give a file name'):
        os.makedirs(tmp_path / 'dir.mp4')
        check_options(tmp_path / 'dir.mp4')


def make_store(root, n, label):
    w = LatentStoreWriter(str(root), n, (4, 2, 2), content='samples', shard_size=4)
    for s in w.pending_shards():
        a, b = w.shard_range(s)
        w.write_shard(s, np.full((b - a, 1, 1, 4, 2, 2), label, np.float32),
                      np.full(b - a, label))
    w.finalize()


def test_packed_latent_dataset_takes_paths(tmp_path):
    make_store(tmp_path / 'a', 3, 0)
    make_store(tmp_path / 'b', 2, 1)
    one = PackedLatentDataset(data_root='', store=tmp_path / 'a', seed=0)
    assert len(one) == 3 and one.store.root == str(tmp_path / 'a')
    assert one[2]['latents'].shape == (4, 2, 2)
    # a Path data_root, and a list of stores mixing str and Path
    both = PackedLatentDataset(data_root=tmp_path, store=['a', Path('b')], seed=0)
    assert len(both) == 5 and [both[i]['labels'] for i in range(5)] == [0, 0, 0, 1, 1]
    assert both.metainfo['stores'] == [str(tmp_path / 'a'), str(tmp_path / 'b')]
    with pytest.raises(TypeError, match='store must be a folder or a list of folders'):
        PackedLatentDataset(data_root=tmp_path, store=['a', 3])


# ---------------------------------------------------------------------------
# (2) integer pixels
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [torch.uint8, torch.int64])
def test_save_videos_refuses_integer_pixels(tmp_path, dtype):
    """uint8 128 (mid grey) was taken as 128 in [-1, 1] and written pure white."""
    grey = torch.full((1, 3, 2, 8, 8), 128, dtype=dtype)
    with pytest.raises(ValueError, match=r'^clips are floats in \[-1, 1\], got torch\.'):
        save_videos(grey, tmp_path / 'u8/', fps=4)
    assert os.listdir(tmp_path) == []                            # nothing written
    # the conversion the message gives writes mid grey
    written = save_videos(grey.float() / 127.5 - 1, str(tmp_path / 'u8') + '/', fps=4)
    frames = read_video_frames(written[0])
    assert abs(float(frames.astype(np.float32).mean()) - 128) < 3


# ---------------------------------------------------------------------------
# (3) one --cfg-options string
# ---------------------------------------------------------------------------

def test_apply_cfg_options_takes_one_string():
    cfg = Config(dict(model=dict(depth=4, width=8), train_cfg=dict(max_iters=10)))
    apply_cfg_options(cfg, 'model.depth=1')
    assert cfg.model.depth == 1
    apply_cfg_options(cfg, ['train_cfg.max_iters=5', 'model.depth=2'])  # (a list as before)
    assert cfg.train_cfg.max_iters == 5 and cfg.model.depth == 2
    with pytest.raises(UserError, match="malformed --cfg-options entry 'a'"):
        apply_cfg_options(cfg, ['a', 'b'])           # (one-character entries: refused)


def test_init_model_takes_one_cfg_options_string(repo_root):
    model, _ = init_model(osp.join(repo_root, DEMO), checkpoint=False,
                          cfg_options='model.denoiser.depth=1')
    assert len(model.denoiser.blocks) == 1
