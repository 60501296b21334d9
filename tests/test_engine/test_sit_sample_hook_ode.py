"""The SiT-XL/2 config draws its samples during training as SiT's train.py does, with
the ODE sampler (Sampler.sample_ode(): dopri5, deterministic) every 10K steps, while
tools/infer.py and tools/test.py keep its sample_cfg (250 SDE steps); and a sample hook
whose VAE folder is not there warns instead of stopping the run."""
import glob
import os.path as osp
from types import SimpleNamespace

from mmengine.runner import Runner

import mmsora.engine  # noqa: F401  (registers the hooks)
from mmsora.diffusion.transport import Transport
from mmsora.registry import HOOKS
from mmsora.utils.config_loading import load_config
from tests.tiny_models import TINY_TRAIN
from tools.train import build_train_config, parse_args

SIT_XL = 'configs/sit/sit_xl2_8xb32_400k_imagenet256.py'
SIT_TINY = 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py'


def sample_hook(cfg) -> dict:
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'SampleVisualizationHook']
    assert len(hooks) == 1
    return dict(hooks[0])


def test_the_sit_xl_hook_samples_with_the_ode_sampler(repo_root):
    cfg = load_config(osp.join(repo_root, SIT_XL))
    hook = HOOKS.build(sample_hook(cfg))
    assert hook.interval == 10000  # (SiT's --sample-every)
    settings = hook._sample_cfg(SimpleNamespace(cfg=cfg))
    assert settings['sampler'] == 'ode_dopri5' and settings['cfg_scale'] == 4.0
    assert 'diffusion_form' not in settings  # (no SDE option carried over)
    # what tools/infer.py and tools/test.py sample with stays SiT's SDE
    assert dict(cfg.sample_cfg) == dict(sampler='sde_euler', num_steps=250, cfg_scale=4.0)
    # the EMA and RNG states of the base's list are kept beside it
    assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'RNGStateHook',
                                                    'SampleVisualizationHook']
    assert cfg.custom_hooks[0]['momentum'] == 1e-4


def tiny_sit(repo_root, work_dir, hook, *options):
    cfg = build_train_config(parse_args([
        osp.join(repo_root, SIT_TINY), '--work-dir', str(work_dir), '--cfg-options',
        *TINY_TRAIN, 'train_cfg.max_iters=2', *options]))
    cfg.custom_hooks = list(cfg.custom_hooks) + [hook]
    # (the logger of a name already made writes to that run's file: one name a test)
    cfg.experiment_name = f'{work_dir.parent.name}-{work_dir.name}'
    return Runner.from_cfg(cfg)


def test_a_tiny_sit_draws_the_hooks_samples_with_dopri5(repo_root, tmp_path, monkeypatch):
    """The SiT-XL/2 config's hook (every 2 steps here) on the shrunk SiT demo."""
    samplers, sample = [], Transport.sample

    def recorded(self, *args, **kwargs):
        samplers.append(kwargs.get('sampler'))
        return sample(self, *args, **kwargs)
    monkeypatch.setattr(Transport, 'sample', recorded)
    hook = dict(sample_hook(load_config(osp.join(repo_root, SIT_XL))), interval=2,
                num_samples=2)
    runner = tiny_sit(repo_root, tmp_path / 'run', hook)
    runner.train()
    assert samplers == ['ode_dopri5']  # (step 2, the last: not again at the end)
    pngs = glob.glob(str(tmp_path / 'run' / '*' / 'vis_data' / 'vis_image' / '*.png'))
    assert [osp.basename(p) for p in pngs] == ['samples_2.png']


def test_a_missing_vae_folder_is_a_warning_not_the_end_of_the_run(repo_root, tmp_path):
    """A run trained on latents never reads model.vae's folder before its first
    samples: one that is not there stopped the run there (SiT-XL/2's config samples at
    step 10K; its checkpoints come every 50K)."""
    from mmsora.models.vaes.autoencoder_kl import AutoencoderKLWrapper
    missing = tmp_path / 'no-vae'
    hook = dict(type='SampleVisualizationHook', interval=1, num_samples=1,
                sample_cfg=dict(num_steps=2))
    runner = tiny_sit(repo_root, tmp_path / 'run', hook)
    runner.model.vae = AutoencoderKLWrapper(pretrained_path=str(missing))
    assert HOOKS.build(hook).sample(runner, 1) is None
    log = open(glob.glob(str(tmp_path / 'run' / '*' / '*.log'))[0]).read()
    assert (f"Iter(sample) [1] no samples (training goes on): VAE folder '{missing}' does "
            'not exist') in log
