"""Every file in configs/ loads, and every runnable config builds its modules.

Big models are built on the meta device (shapes only, no memory); each registry type a
config names must resolve in mmsora's registries, so typos in configs fail here.
"""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner  # noqa: F401  (registers mmengine's own modules)

import mmsora.datasets  # noqa: F401
import mmsora.diffusion  # noqa: F401
import mmsora.engine  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.registry import (DATASETS, DATA_SAMPLERS, HOOKS, MODELS, OPTIM_WRAPPERS,
                             OPTIMIZERS, PARAM_SCHEDULERS)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ALL = sorted(glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
RUNNABLE = [p for p in ALL if '_base_' not in p]


def rel(path):
    return osp.relpath(path, ROOT)


def test_configs_exist():
    assert len(RUNNABLE) >= 13 and any(p.endswith('_base_/default_runtime.py') for p in ALL)


@pytest.mark.parametrize('path', ALL, ids=rel)
def test_config_loads(path):
    Config.fromfile(path)


@pytest.mark.parametrize('path', RUNNABLE, ids=rel)
def test_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmsora'
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    denoiser = cfg.model.denoiser
    if denoiser.type in ('DiT', 'VideoDiT'):  # the latent shape fits the transformer
        size = denoiser.input_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        tokens = (h // denoiser.patch_size) * (w // denoiser.patch_size)
        assert model.denoiser.pos_embed.shape == (1, tokens, denoiser.hidden_size)
        shape = tuple(cfg.model.latent_shape)
        if denoiser.type == 'VideoDiT':  # (C, T, H, W): T frames, at most num_frames
            assert len(shape) == 4 and shape[1] <= model.denoiser.num_frames
            shape = shape[:1] + shape[2:]
        assert shape == (denoiser.in_channels, h, w)
    assert DATASETS.get(cfg.train_dataloader.dataset.type) is not None
    assert DATA_SAMPLERS.get(cfg.train_dataloader.sampler.type) is not None
    assert OPTIM_WRAPPERS.get(cfg.optim_wrapper.type) is not None
    assert OPTIMIZERS.get(cfg.optim_wrapper.optimizer.type) is not None
    for sched in cfg.get('param_scheduler') or []:
        assert PARAM_SCHEDULERS.get(sched.type) is not None
    for hook in list(cfg.default_hooks.values()) + list(cfg.custom_hooks):
        assert HOOKS.get(hook.type) is not None, hook.type


def test_dit_xl2_config_is_the_paper_recipe():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/dit/dit_xl2_8xb32_400k_imagenet256.py'))
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    params = sum(p.numel() for p in model.denoiser.parameters() if p.requires_grad)
    assert abs(params - 675e6) / 675e6 < 0.01
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, weight_decay=0.0,
                                               betas=(0.9, 0.999))
    assert cfg.train_dataloader.batch_size * 8 == 256
    assert cfg.train_cfg.max_iters == 400000
    ema = [h for h in cfg.custom_hooks if h.type == 'EMAHook'][0]
    assert ema.momentum == 1e-4  # decay 0.9999
    assert cfg.sample_cfg == dict(sampler='ddpm', num_steps=250, cfg_scale=4.0)


def test_demo_config_builds_its_data():
    cfg = Config.fromfile(osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    item = dataset[0]
    assert tuple(item['latents'].shape) == tuple(cfg.model.latent_shape)


def test_dit_xl2_512_config_takes_the_released_512_weights():
    """The 512 px config is the 256 px recipe with 64x64 latents: the same weights
    but pos_embed, which DiT-XL-2-512x512.pt holds for 1024 tokens."""
    shapes = {}
    for size in (256, 512):
        cfg = Config.fromfile(osp.join(
            ROOT, f'configs/dit/dit_xl2_8xb32_400k_imagenet{size}.py'))
        with torch.device('meta'):
            model = MODELS.build(cfg.model)
        shapes[size] = {k: tuple(v.shape) for k, v in model.denoiser.state_dict().items()}
        assert cfg.train_dataloader.dataset.data_root == f'data/imagenet{size}_latents'
    assert shapes[512].pop('pos_embed') == (1, 1024, 1152)
    assert shapes[256].pop('pos_embed') == (1, 256, 1152)
    assert shapes[512] == shapes[256]
    assert cfg.model.latent_shape == (4, 64, 64) and cfg.sample_cfg.cfg_scale == 4.0


def test_the_readme_fastdit_config_trains_on_fastdit_features(tmp_path, monkeypatch):
    """The README's config for training on fast-DiT's folders as they are: it builds
    and its dataset reads fast-DiT's layout (relative to the working directory)."""
    import re

    import numpy as np
    readme = open(osp.join(ROOT, 'README.md')).read()
    block = re.search(r'```python\n# configs/my_dit_xl2_fastdit.py\n(.*?)```', readme,
                      re.S).group(1)
    (tmp_path / 'configs').mkdir()
    (tmp_path / 'configs' / 'my_dit_xl2_fastdit.py').write_text(
        block.replace("'./dit/", repr(osp.join(ROOT, 'configs', 'dit'))[:-1] + "/"))
    for folder in ('imagenet256_features', 'imagenet256_labels'):
        (tmp_path / 'features' / folder).mkdir(parents=True)
    for i in range(3):  # fast-DiT saves (1, 4, 32, 32) float32 latents, (1,) labels
        np.save(tmp_path / 'features' / 'imagenet256_features' / f'{i}.npy',
                np.zeros((1, 4, 32, 32), np.float32))
        np.save(tmp_path / 'features' / 'imagenet256_labels' / f'{i}.npy', np.array([i]))
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile('configs/my_dit_xl2_fastdit.py')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset) == 3 and dataset[2]['labels'] == 2
    assert tuple(dataset[0]['latents'].shape) == tuple(cfg.model.latent_shape)


@pytest.mark.parametrize('path', RUNNABLE, ids=rel)
def test_train_py_checks_pass_on_every_config(path, tmp_path):
    """tools/train.py's checks before the Runner starts (the model built on the meta
    device, train_cfg and dataset keys against their classes, strategies, batches)
    take every shipped config as it is: none is refused for a key of its own."""
    from mmsora.engine.run_config_checks import build_model_on_meta
    from tools.train import build_train_config, parse_args
    cfg = build_train_config(parse_args([path, '--work-dir', str(tmp_path / 'w')]))
    assert cfg.work_dir == str(tmp_path / 'w') and not (tmp_path / 'w').exists()
    assert build_model_on_meta(cfg) is not None  # checked, not passed over
    # the other ranks wait in a collective while rank 0 draws the samples during
    # training: NCCL's default 10 minutes ended a text model's first round (walk-through q)
    assert cfg.env_cfg.dist_cfg.get('timeout', 0) >= 1800
