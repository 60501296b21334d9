"""text2video's mmsora pictures at the output's aspect ratio: a convolutional denoiser
(Stable Cascade video) samples on a latent grid of the output's shape and about its
config's area (its square clips were cropped to 16:9 by the pan/zoom, 44% of each frame
lost: walk-through s); a transformer keeps the size of its position table."""
import os.path as osp

import pytest
import torch

from mmsora.apis.inference import set_output_size
from mmsora.apis.text2video import Shot, build_pictures
from mmsora.registry import MODELS
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.config_loading import load_config
from tests.conftest import REPO_ROOT

CONFIG = 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py'


@pytest.fixture(scope='module')
def cascade(tmp_path_factory):
    """The tiny Stable Cascade video config as text2video's mmsora backend (random
    Stage C; tiny CLIP and Stage B + A in local folders)."""
    from tools.make_tiny_stable_cascade import main
    root = tmp_path_factory.mktemp('cascade')
    folders = [f'model.text_encoder.pretrained_path={root / "clip"}',
               f'model.vae.pretrained_path={root / "stable-cascade"}',
               f'train_dataloader.dataset.data_root={root / "store"}']
    main([osp.join(REPO_ROOT, CONFIG), '--cfg-options', *folders])
    cfg = load_config(osp.join(REPO_ROOT, CONFIG))
    apply_cfg_options(cfg, folders[:2])
    torch.manual_seed(0)
    denoiser = MODELS.build(cfg.model.denoiser)
    checkpoint = root / 'random.pth'  # (a random Stage C, as a run's checkpoint)
    torch.save(dict(state_dict={f'denoiser.{k}': v for k, v in denoiser.state_dict().items()}),
               checkpoint)
    return build_pictures(f'mmsora:{osp.join(REPO_ROOT, CONFIG)}', checkpoint=str(checkpoint),
                          device='cpu', cfg_options=folders[:2])


def test_a_convolutional_model_samples_the_outputs_aspect(cascade):
    shots = [Shot([], prompt='a red disk', index=0)]
    assert cascade.model.latent_shape == (16, 4, 4, 4)  # 32x32 frames
    # 16:9 on about the config's 16 latent cells: 3x5 (24x40 frames), not 32x32 cut down
    clip, = cascade.render_all(shots, (64, 36), progress=False)
    assert clip.shape == (4, 24, 40, 3)
    assert cascade.match_aspect((36, 64)) == (24, 40)  # portrait: W 24, H 40
    assert cascade.model.latent_shape == (16, 4, 5, 3)
    # a square output: the config's grid again (each call starts from it)
    clip, = cascade.render_all(shots, (48, 48), progress=False)
    assert clip.shape == (4, 32, 32, 3) and cascade.model.latent_shape == (16, 4, 4, 4)


def test_the_stable_cascade_grid_is_asked_for_as_it_decodes(cascade, capsys):
    """The released models' factor is 42.68 (Stage B's 10.67 x Stage A's 4): the frames
    asked for are the size the grid decodes to, which gives the same grid back, so
    set_output_size keeps it and notes no rounding."""
    tiny = cascade.model.vae
    released = type(tiny)(pretrained_path=tiny.pretrained_path,
                          decoder_subfolder=tiny.decoder_subfolder, latent_dim_scale=10.67)
    f = released.downsample_factor
    assert round(f, 2) == 42.68
    for rows in range(1, 41):
        for cols in (rows, round(rows * 16 / 9), round(rows * 9 / 16) or 1):
            asked = released.decoded_size(int(rows * f), int(cols * f))
            assert released.latent_size(*asked) == (rows, cols), (rows, cols, asked)
    cascade.model.vae = released
    try:
        set_output_size(cascade.model, resolution=released.decoded_size(768, 1365))
        assert cascade.model.latent_shape[-2:] == (18, 32)
        assert 'makes' not in capsys.readouterr().err
    finally:
        cascade.model.vae = tiny
        cascade.model.latent_shape = (16, 4, 4, 4)
