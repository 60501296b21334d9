"""tools/train.py's checks of a latent store against the config (walk-through x: a
Latte / Open-Sora user training a video DiT on tools/extract_features.py's store)."""
import os.path as osp
import shutil

import numpy as np
import pytest
import torch

from mmsora.datasets import LatentStoreWriter
from mmsora.utils.cli import UserError
from tests.shared_videos import BIKES, needs_videos
from tests.tiny_models import TINY_VAE, TINY_WAN_VAE
from tools.train import build_train_config, parse_args

pytestmark = pytest.mark.usefixtures('kept_environ')


@pytest.fixture(scope='module')
def vae_dirs(tmp_path_factory):
    """Tiny random SD and Wan VAE folders."""
    from diffusers import AutoencoderKL, AutoencoderKLWan
    root = tmp_path_factory.mktemp('vaes')
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(root / 'sd')
    AutoencoderKLWan(**TINY_WAN_VAE).save_pretrained(root / 'wan')
    return str(root / 'sd'), str(root / 'wan')


def make_store(root, vae, latent_shape, num_frames, scale_factor, labels=(0, 1),
               meta=None, skipped=(), num_source_items=None):
    """A store as extract_features.py writes it (one shard)."""
    writer = LatentStoreWriter(str(root), num_source_items or len(labels) + len(skipped),
                               latent_shape, scale_factor=scale_factor, vae=vae,
                               meta=dict(num_frames=num_frames, **(meta or {})))
    writer.write_shard(0, np.zeros((len(labels), 1, 2, *latent_shape), np.float32),
                       list(labels), skipped=list(skipped))
    writer.finalize()
    return str(root)


def train_config(repo_root, tmp_path, store, size, *options):
    """tools/train.py's config of dit_xl2_video.py on ``store`` (latents (4, 4, size,
    size) or fewer frames), with ``options``."""
    argv = [osp.join(repo_root, 'configs/dit_xl2_video.py'), '--work-dir',
            str(tmp_path / 'w'), '--cfg-options', f'train_dataloader.dataset.data_root={store}',
            f'model.denoiser.input_size={size}', 'model.denoiser.num_frames=4', *options]
    return build_train_config(parse_args(argv))


def test_a_store_of_another_kind_of_vae_is_refused(repo_root, tmp_path, vae_dirs, capsys):
    """An SD store (frame by frame) trained with VideoVAEWrapper ran without a word and
    sampled 31 frames at 64x64 for 16 at 32x32; a Wan store trained with the SD config
    was told 'set model.vae.scale_factor=1', and then sampled 9 frames at 16x16."""
    sd, wan = vae_dirs
    sd_store = make_store(tmp_path / 'sd_store', sd, (4, 4, 8, 8), 4, 0.18215)
    wan_store = make_store(tmp_path / 'wan_store', wan, (4, 3, 4, 4), 5, 1.0)
    shape8, shape4 = 'model.latent_shape=[4,4,8,8]', 'model.latent_shape=[4,3,4,4]'
    with pytest.raises(UserError, match=(
            rf'^{sd_store}: the latents were encoded by AutoencoderKL at {sd} \(an image '
            r'VAE, frame by frame: extract_features.py --vae\) but model.vae is '
            rf'VideoVAEWrapper \(AutoencoderKLWan, {wan}\): its samples would decode to other '
            r'frames and sizes; set --cfg-options model.vae.type=AutoencoderKLWrapper '
            rf'model.vae.pretrained_path={sd} model.vae.scale_factor=0.18215 without '
            r'model.vae.class_name \(a VideoVAEWrapper key\), or extract the latents again '
            rf'with --video-vae {wan}$')):
        train_config(repo_root, tmp_path, sd_store, 8, shape8, 'model.vae.type=VideoVAEWrapper',
                     f'model.vae.pretrained_path={wan}')
    fix = (f'model.vae.type=VideoVAEWrapper model.vae.class_name=AutoencoderKLWan '
           f'model.vae.pretrained_path={wan} model.vae.scale_factor=1')
    with pytest.raises(UserError) as info:
        train_config(repo_root, tmp_path, wan_store, 4, shape4)
    assert str(info.value).startswith(f'{wan_store}: the latents were encoded by '
                                      f'AutoencoderKLWan at {wan} (a video VAE: '
                                      'extract_features.py --video-vae) but model.vae is '
                                      'AutoencoderKLWrapper (AutoencoderKL, ')
    assert f'set --cfg-options {fix}, or extract' in str(info.value)
    assert 'scaled by' not in str(info.value)
    train_config(repo_root, tmp_path, wan_store, 4, shape4, *fix.split())  # the advice works

    # the VAE folder gone (moved): the kind from the frames (5 frames -> 3 latent ones)
    moved = make_store(tmp_path / 'moved', str(tmp_path / 'gone'), (4, 3, 4, 4), 5, 1.0)
    with pytest.raises(UserError, match=r'encoded by a VAE at .*gone \(a video VAE'):
        train_config(repo_root, tmp_path, moved, 4, shape4)
    # the same kind, its folder not here (a store from another machine): no note naming
    # a folder to set that is not on this machine
    capsys.readouterr()
    train_config(repo_root, tmp_path, moved, 4, shape4, *fix.split())
    assert 'encoded by' not in capsys.readouterr().err
    # the same kind from another folder that is here: a note, not a refusal
    shutil.copytree(wan, tmp_path / 'gone')
    train_config(repo_root, tmp_path, moved, 4, shape4, *fix.split())
    assert (f'{moved}: the latents were encoded by the VAE at {tmp_path / "gone"} but '
            f'model.vae.pretrained_path is {wan}: if that is not the same VAE (moved or '
            f'copied), samples decode wrongly; set model.vae.pretrained_path='
            f'{tmp_path / "gone"}') in capsys.readouterr().err
    train_config(repo_root, tmp_path, sd_store, 8, shape8, f'model.vae.pretrained_path={sd}')
    assert 'encoded by' not in capsys.readouterr().err


def test_a_video_vaes_scale_is_its_own_not_the_base_configs(repo_root, tmp_path, vae_dirs):
    """A Wan store trained with model.vae.type=VideoVAEWrapper took the base config's SD
    scale 0.18215 without a word (the check looked at AutoencoderKLWrapper only, and
    VideoVAEWrapper.scale_factor said 1.0 whatever it scaled by): samples ~5.5x off."""
    from mmsora.models import VideoVAEWrapper
    _, wan = vae_dirs
    assert VideoVAEWrapper(pretrained_path=wan).scale_factor == 1.0  # Wan's config has none
    vae = VideoVAEWrapper(pretrained_path=wan, scale_factor=0.18215)
    assert vae.scale_factor == 0.18215 and vae.__dict__['_vae'] is None  # (not loaded)
    # what it reports is what it scales by
    x = torch.rand(1, 3, 5, 8, 8) * 2 - 1
    torch.testing.assert_close(vae.encode_moments(x)[0] / 0.18215,
                               VideoVAEWrapper(pretrained_path=wan).encode_moments(x)[0])

    store = make_store(tmp_path / 'wan_store', wan, (4, 3, 4, 4), 5, 1.0)
    options = ['model.latent_shape=[4,3,4,4]', 'model.vae.type=VideoVAEWrapper',
               f'model.vae.pretrained_path={wan}']
    with pytest.raises(UserError, match=r'wan_store/index.json: the latents were scaled by 1 '
                                        r'but model.vae.scale_factor is 0.18215: set '
                                        r'model.vae.scale_factor=1 '):
        train_config(repo_root, tmp_path, store, 4, *options)
    train_config(repo_root, tmp_path, store, 4, *options, 'model.vae.scale_factor=1')
    train_config(repo_root, tmp_path, store, 4, *options, 'model.vae.scale_factor=None')
    # a store scaled by 0.5 against the VAE's own scale (none given in the config)
    half = make_store(tmp_path / 'half', wan, (4, 3, 4, 4), 5, 0.5)
    with pytest.raises(UserError, match=r'scaled by 0.5 but model.vae.scale_factor is unset '
                                        r"\(AutoencoderKLWan's own: 1\): set "
                                        r'model.vae.scale_factor=0.5'):
        train_config(repo_root, tmp_path, half, 4, *options, 'model.vae.scale_factor=None')


@needs_videos
def test_extract_features_records_a_video_vaes_scale(repo_root, tmp_path, vae_dirs):
    """extract_features.py --video-vae --scale-factor 0.5 recorded scale_factor 1.0 (what
    VideoVAEWrapper said), so nothing could compare it."""
    from mmsora.datasets import LatentStore, write_manifest
    from tests.extract_tools import extract
    _, wan = vae_dirs
    write_manifest([dict(path=BIKES, label=0)], str(tmp_path / 'clips.csv'))
    out = str(tmp_path / 'store')
    extract.main(['--manifest', str(tmp_path / 'clips.csv'), '--out', out, '--video-vae', wan,
                  '--num-frames', '5', '--size', '16', '--num-workers', '0', '--device',
                  'cpu', '--dtype', 'float32', '--scale-factor', '0.5'])
    assert LatentStore(out).index['scale_factor'] == 0.5
    options = ['model.latent_shape=[4,3,4,4]', 'model.vae.type=VideoVAEWrapper',
               f'model.vae.pretrained_path={wan}', 'model.num_classes=1',
               'model.denoiser.num_classes=1']
    with pytest.raises(UserError, match='scaled by 0.5 but model.vae.scale_factor is 0.18215'):
        train_config(repo_root, tmp_path, out, 4, *options)
    train_config(repo_root, tmp_path, out, 4, *options, 'model.vae.scale_factor=0.5')


def test_unlabelled_rows_name_both_class_keys(repo_root, tmp_path, vae_dirs):
    """A store of an unlabelled manifest (-1) was told '... or set model.num_classes=1';
    doing so stopped at 'model.num_classes=1 but model.denoiser.num_classes=101: set
    both'. Both messages (tools/train.py's and the model's) name both keys now."""
    sd, _ = vae_dirs
    store = make_store(tmp_path / 'store', sd, (4, 4, 8, 8), 4, 0.18215, labels=(-1, -1))
    shape8 = 'model.latent_shape=[4,4,8,8]'
    with pytest.raises(UserError, match=r'or set model.num_classes=1 '
                                        r'model.denoiser.num_classes=1 for an unconditional'):
        train_config(repo_root, tmp_path, store, 8, shape8)
    train_config(repo_root, tmp_path, store, 8, shape8, 'model.num_classes=1',
                 'model.denoiser.num_classes=1')  # the advice works

    from mmsora.models import LatentDiffusion
    model = LatentDiffusion(
        denoiser=dict(type='VideoDiT', input_size=4, patch_size=2, in_channels=4,
                      hidden_size=32, depth=2, num_heads=2, num_classes=3, num_frames=2,
                      learn_sigma=True),
        diffusion=dict(type='GaussianDiffusion', num_timesteps=1000, learn_sigma=True),
        latent_shape=(4, 2, 4, 4), num_classes=3)
    with pytest.raises(ValueError, match=r'or set model.num_classes=1 '
                                         r'model.denoiser.num_classes=1 for an unconditional'):
        model._check_labels(torch.tensor([-1, 0]))


def test_few_classes_in_the_store_are_noted(repo_root, tmp_path, vae_dirs, capsys):
    """A 2-class store on the 101-class UCF config trained without a word."""
    sd, _ = vae_dirs
    store = make_store(tmp_path / 'store', sd, (4, 4, 8, 8), 4, 0.18215, labels=(0, 1))
    train_config(repo_root, tmp_path, store, 8, 'model.latent_shape=[4,4,8,8]')
    assert (f"{store}: the store's labels go up to 1 but model.num_classes=101: labels 2 to "
            '100 have no clips to learn from (samples of them are untrained); set '
            'model.num_classes=2 and model.denoiser.num_classes=2') in capsys.readouterr().err
    train_config(repo_root, tmp_path, store, 8, 'model.latent_shape=[4,4,8,8]',
                 'model.num_classes=2', 'model.denoiser.num_classes=2')
    assert 'have no clips' not in capsys.readouterr().err


def test_clip_rates_count_only_the_clips_the_store_holds(repo_root, tmp_path, vae_dirs,
                                                         capsys):
    """A 4 fps video the store skipped as too short still showed in the rates ('from 4
    to 25 across the videos'): only the clips the store holds count now."""
    sd, _ = vae_dirs
    manifest = tmp_path / 'clips.csv'
    manifest.write_text('path,fps,label\na.mp4,25,0\nb.mp4,4,1\nc.mp4,24,1\n')
    store = make_store(tmp_path / 'store', sd, (4, 4, 8, 8), 4, 0.18215, labels=(0, 1),
                       skipped=[str(tmp_path / 'b.mp4')],
                       meta=dict(target_fps=30.0, source=str(manifest)))
    train_config(repo_root, tmp_path, store, 8, 'model.latent_shape=[4,4,8,8]',
                 'model.num_classes=2', 'model.denoiser.num_classes=2')
    err = capsys.readouterr().err
    assert ('the clips were sampled at 25 fps (extract_features.py --target-fps 30, 24 to 25 '
            'across the videos) but sample_cfg.fps is 8') in err, err
    # extracted with --data-root elsewhere (not recorded): matched by file name
    other = make_store(tmp_path / 'other', sd, (4, 4, 8, 8), 4, 0.18215, labels=(0, 1),
                       skipped=['/elsewhere/b.mp4'],
                       meta=dict(target_fps=30.0, source=str(manifest)))
    train_config(repo_root, tmp_path, other, 8, 'model.latent_shape=[4,4,8,8]',
                 'model.num_classes=2', 'model.denoiser.num_classes=2')
    assert '24 to 25 across the videos' in capsys.readouterr().err
