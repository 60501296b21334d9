"""Walk-through "at" (a Latte user: UCF-101's class folders of clips, a VideoDiT config
shrunk on the command line): a folder of videos given as an image folder, and a store
of another clip size than the config's."""
import os
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config

from mmsora.utils.cli import UserError
from tests.extract_tools import extract

VIDEOS = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), '..',
                  'shared', 'data', 'videos')


def test_a_folder_of_class_videos_as_data_path_says_how_to_extract_it(tmp_path):
    """--data-path ucf101/ (Latte's layout: ucf101/CLASS/*.avi) said 'holds no images in
    class subfolders (expected root/class_name/*.jpg|...)', naming pictures alone."""
    root = tmp_path / 'ucf'
    for cls, video in (('Biking', 'bikes.mp4'), ('Bunny', 'bigbuckbunny.mp4')):
        (root / cls).mkdir(parents=True)
        os.symlink(osp.join(VIDEOS, video), root / cls / f'v_{cls}_g01_c01.mp4')
    (root / 'Biking' / 'v_Biking_g01_c02.avi').write_bytes(b'')  # (UCF-101's own kind)
    argv = ['--data-path', str(root), '--vae', str(tmp_path / 'no_vae'), '--out',
            str(tmp_path / 'out'), '--device', 'cpu']
    with pytest.raises(UserError) as e:
        extract.main(argv)
    manifest = osp.join(str(root), 'train.csv')
    assert str(e.value) == (
        f'--data-path {root} holds videos (3 files), not pictures: list them with '
        f'tools/make_manifest.py {root} --out {manifest} --label-from-folder (a class per '
        f'folder), then give --manifest {manifest}')
    assert not (tmp_path / 'out').exists()
    # a folder of pictures among videos is an image folder, as before
    from PIL import Image
    Image.new('RGB', (8, 8)).save(root / 'Bunny' / 'still.png')
    with pytest.raises(UserError, match='no_vae'):  # (past the source: the VAE's folder)
        extract.main(argv)


def test_a_store_of_other_clips_names_every_size_to_set(repo_root, tmp_path):
    """8-frame 64 px clips (latents (4, 8, 8, 8)) on the UCF-101 config (4, 16, 32, 32):
    the refusal said to set model.latent_shape "and the denoiser's sizes to match"; set
    alone, the run was refused again for model.denoiser.input_size."""
    from mmsora.datasets import LatentStoreWriter
    from mmsora.datasets.store_checks import check_latent_store
    writer = LatentStoreWriter(str(tmp_path / 'store'), 1, (4, 8, 8, 8))
    writer.write_shard(0, np.zeros((1, 1, 2, 4, 8, 8, 8), np.float32), [0])
    writer.finalize()
    cfg = Config.fromfile(osp.join(repo_root,
                                   'configs/video_dit/video_dit_s2_8xb5_1m_ucf101.py'))
    cfg.train_dataloader.dataset.data_root = str(tmp_path / 'store')
    with pytest.raises(UserError) as e:
        check_latent_store(cfg)
    keys = ("'model.latent_shape=(4,8,8,8)' model.denoiser.input_size=8 "
            'model.denoiser.num_frames=8')
    assert str(e.value) == (
        f'{tmp_path / "store"}: the store holds latents of shape (4, 8, 8, 8) but '
        f'model.latent_shape is (4, 16, 32, 32): set --cfg-options {keys}, or extract at '
        "the config's size")
    # what it says to set is what fits: the store is taken and the model builds
    cfg.model.latent_shape = (4, 8, 8, 8)
    cfg.model.denoiser.update(input_size=8, num_frames=8, hidden_size=32, depth=2,
                              num_heads=2)
    check_latent_store(cfg)
    from mmsora.models import LatentDiffusion
    from mmsora.registry import MODELS
    assert isinstance(MODELS.build(cfg.model), LatentDiffusion)


def test_a_non_square_size_the_config_has_is_not_said_and_lists_are_quoted(tmp_path):
    """A config's input_size (8, 16) (a tuple) against the store's [8, 16] (a list) was
    told to be set again; a list printed bare ([8,16]) is a file pattern to zsh."""
    from mmengine.config import Config

    from mmsora.datasets.store_checks import denoiser_sizes
    cfg = Config(dict(model=dict(denoiser=dict(in_channels=4, input_size=(8, 16),
                                               num_frames=4))))
    assert denoiser_sizes(cfg, [4, 4, 8, 16]) == []
    assert denoiser_sizes(cfg, [4, 2, 8, 8]) == ['model.denoiser.input_size=8',
                                                 'model.denoiser.num_frames=2']
    assert denoiser_sizes(cfg, [4, 4, 8, 12]) == ['model.denoiser.input_size=[8,12]']
