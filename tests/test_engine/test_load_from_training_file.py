"""--load-from a DiT / fast-DiT / SiT training file (``{'model', 'ema', 'opt', 'args'}``)
continues its training: the model starts from its 'model' weights and the EMA from its
'ema' weights, exactly. Both started from 'ema', which threw the run's trained weights
away. A released file (the EMA weights alone) gives both the same, as before; a run
without an EMA takes 'model' alone; --fsdp keeps both on 'ema' (its EMA starts from the
model's weights) and says so; a video model inflates 'model' and 'ema' alike."""
import argparse
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from mmsora.engine.ema import EMAHook
from mmsora.models import LatentDiffusion
from mmsora.registry import MODELS
from tools.train import build_train_config, parse_args

IMAGE = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
VIDEO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
# lr 0: the trained weights stay as loaded, and the EMA's first update is a closed form
COMMON = ['model.denoiser.hidden_size=32', 'model.denoiser.num_heads=2',
          'model.denoiser.input_size=8', 'train_dataloader.dataset.size=8',
          'train_dataloader.dataset.num_samples=16', 'train_dataloader.batch_size=2',
          'param_scheduler=[]', 'optim_wrapper.optimizer.lr=0.0', 'train_cfg.max_iters=1',
          'default_hooks.checkpoint.interval=1']
IMAGE_TINY = ['model.denoiser.depth=2', 'model.latent_shape=[3,8,8]']
# Latte depth 4 = the image DiT's 2 blocks as spatial ones; the image DiT learned sigma
VIDEO_TINY = ['model.denoiser.depth=4', 'model.latent_shape=[3,4,8,8]',
              'model.denoiser.learn_sigma=True', 'model.diffusion.learn_sigma=True',
              'model.diffusion.predict_xstart=False']
MOMENTUM = 0.01  # the image and video demos' EMAHook


pytestmark = pytest.mark.usefixtures('kept_environ')  # parse_args sets LOCAL_RANK


class StartOfTraining(Hook):
    """The model's denoiser and the EMA's as the first iteration starts (after every
    hook's before_train, the EMA hook's too), and the EMA's update count."""
    priority = 'LOWEST'

    def before_train(self, runner):
        ema = next(h for h in runner.hooks if isinstance(h, EMAHook)).ema_model
        self.model, self.average = ({k: v.detach().clone() for k, v in
                                     m.denoiser.state_dict().items()}
                                    for m in (runner.model, ema.module))
        self.steps = int(ema.steps)


def image_dit_weights(seed):
    """A tiny image DiT's state dict (the configs' denoiser, IMAGE_TINY), every weight
    drawn from ``seed`` (DiT zeroes its adaLN and output layers: they would be alike)
    but the fixed position table."""
    dit = MODELS.build(dict(type='DiT', input_size=8, patch_size=2, in_channels=3,
                            hidden_size=32, depth=2, num_heads=2, class_dropout_prob=0.1,
                            num_classes=4, learn_sigma=True))
    generator = torch.Generator().manual_seed(seed)
    return {k: v if k == 'pos_embed' else
            0.05 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
            for k, v in dit.state_dict().items()}


def save_training_file(path):
    """A DiT train.py checkpoint of two different weight sets; returns them."""
    trained, average = image_dit_weights(1), image_dit_weights(2)
    torch.save(dict(model=trained, ema=average, opt=dict(state={}, param_groups=[]),
                    args=argparse.Namespace(model='DiT-XL/2', image_size=256)), path)
    return trained, average


def config(repo_root, path, work_dir, *options, load_from=None, flags=()):
    argv = [path if osp.isabs(path) else osp.join(repo_root, path), '--work-dir',
            str(work_dir), *flags, '--cfg-options', *COMMON, *options]
    cfg = build_train_config(parse_args(argv + ['--load-from', load_from]))
    cfg.experiment_name = osp.basename(str(work_dir))
    return cfg


def train_one_iteration(cfg):
    runner = Runner.from_cfg(cfg)
    probe = StartOfTraining()
    runner.register_hook(probe)
    runner.train()
    return probe, torch.load(osp.join(cfg.work_dir, 'iter_1.pth'), weights_only=False)


def assert_equal(ours, theirs, keys=None):
    for key in keys or theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_the_model_starts_from_model_and_the_ema_from_ema(repo_root, tmp_path, capsys):
    path = str(tmp_path / '0000050.pt')
    trained, average = save_training_file(path)
    cfg = config(repo_root, IMAGE, tmp_path / 'run', *IMAGE_TINY, load_from=path)
    assert (f"note: --load-from {path}: a DiT / fast-DiT training file: its training "
            "continues: the model starts from its 'model' weights, the EMA from its 'ema' "
            "weights; its 'opt' (optimizer state) is not used: the optimizer starts "
            "afresh") in capsys.readouterr().err
    probe, saved = train_one_iteration(cfg)
    assert_equal(probe.model, trained)
    assert_equal(probe.average, average)
    assert probe.steps == 1  # the first update averages: it does not copy the model
    # after one step (lr 0): the trained weights as loaded; the EMA moved towards them
    # by the momentum (the checkpoint keeps the EMA in state_dict, as mmengine swaps)
    model = {k[len('module.denoiser.'):]: v for k, v in saved['ema_state_dict'].items()
             if k.startswith('module.denoiser.')}
    ema = {k[len('denoiser.'):]: v for k, v in saved['state_dict'].items()
           if k.startswith('denoiser.')}
    assert_equal(model, trained)
    assert_equal(ema, {k: average[k].lerp(trained[k], MOMENTUM) for k in trained})
    assert not torch.equal(ema['blocks.0.attn.qkv.weight'], trained['blocks.0.attn.qkv.weight'])


def test_a_video_model_inflates_model_and_ema(repo_root, tmp_path):
    path = str(tmp_path / 'dit.pt')
    trained, average = save_training_file(path)
    probe, _ = train_one_iteration(config(repo_root, VIDEO, tmp_path / 'video', *VIDEO_TINY,
                                          load_from=path))
    assert probe.steps == 1
    for start, weights in ((probe.model, trained), (probe.average, average)):
        # the image DiT's block i is the video model's spatial block 2 i
        for ours, theirs in (('blocks.0.attn.qkv.weight', 'blocks.0.attn.qkv.weight'),
                             ('blocks.2.mlp.fc1.weight', 'blocks.1.mlp.fc1.weight'),
                             ('final_layer.linear.weight', 'final_layer.linear.weight')):
            assert torch.equal(start[ours], weights[theirs]), ours


def test_without_an_ema_the_model_starts_from_model(repo_root, tmp_path, capsys):
    path = str(tmp_path / 'dit.pt')
    trained, _ = save_training_file(path)
    plain = tmp_path / 'no_ema.py'
    plain.write_text(f"_base_ = [{osp.join(repo_root, IMAGE)!r}]\n"
                     "custom_hooks = [dict(type='RNGStateHook')]\n")
    cfg = config(repo_root, str(plain), tmp_path / 'run', *IMAGE_TINY, load_from=path)
    assert (f"note: --load-from {path}: a DiT / fast-DiT training file: the model starts "
            "from its 'model' weights (the trained ones); its 'ema' weights are not used "
            "(the config keeps no EMA: no EMAHook in custom_hooks)") in capsys.readouterr().err
    runner = Runner.from_cfg(cfg)
    runner._init_model_weights()
    assert_equal(runner.model.denoiser.state_dict(), trained)


def test_a_released_file_gives_model_and_ema_the_same(repo_root, tmp_path, capsys):
    path = str(tmp_path / 'DiT-tiny.pt')
    weights = image_dit_weights(3)
    torch.save(weights, path)  # the released DiT-XL-2-256x256.pt: the EMA weights alone
    cfg = config(repo_root, IMAGE, tmp_path / 'run', *IMAGE_TINY, load_from=path)
    assert 'training file' not in capsys.readouterr().err
    probe, saved = train_one_iteration(cfg)
    assert_equal(probe.model, weights)
    assert probe.steps == 0  # the first update copies the model
    assert_equal({k[len('denoiser.'):]: v for k, v in saved['state_dict'].items()
                  if k.startswith('denoiser.')}, weights)


@pytest.mark.parametrize('how, why', [
    (dict(flags=['--fsdp', '--launcher', 'pytorch']),
     "with --deepspeed / --fsdp the EMA starts from the model's weights"),
    (dict(hook="dict(type='mmengine.EMAHook', momentum=0.01)"),
     "mmengine's EMAHook starts from the model's weights; type='EMAHook' (mmsora's) "
     "starts from its 'ema' and the model from its 'model'"),
    (dict(hook="dict(type='EMAHook', momentum=0.01, begin_iter=1)"),
     'the EMA follows the model until begin_iter=1'),
])
def test_where_the_ema_cannot_start_from_ema_both_do(repo_root, tmp_path, capsys, how, why):
    path = str(tmp_path / 'dit.pt')
    save_training_file(path)
    config_path = osp.join(repo_root, IMAGE)
    if 'hook' in how:
        config_path = str(tmp_path / 'other_ema.py')
        with open(config_path, 'w') as f:
            f.write(f"_base_ = [{osp.join(repo_root, IMAGE)!r}]\n"
                    f"custom_hooks = [{how['hook']}]\n")
    # (model.pretrained_entry as a dumped config of a run from such a file keeps it)
    cfg = config(repo_root, config_path, tmp_path / 'run', *IMAGE_TINY,
                 'model.pretrained_entry=model', load_from=path, flags=how.get('flags', ()))
    assert cfg.model.pretrained_entry == 'auto'
    assert (f"note: --load-from {path}: a DiT / fast-DiT training file: the model starts "
            "from its 'ema' weights (the ones DiT samples with), the EMA from the same "
            f"({why}); its 'model' weights are not used") in capsys.readouterr().err


def test_pretrained_entry_is_checked_and_other_files_load_as_they_are(tmp_path):
    model = dict(denoiser=dict(type='DiT', input_size=8, patch_size=2, in_channels=3,
                               hidden_size=32, depth=2, num_heads=2, num_classes=4),
                 diffusion=dict(type='GaussianDiffusion', learn_sigma=True),
                 latent_shape=(3, 8, 8), num_classes=4)
    with pytest.raises(ValueError, match=r"^model.pretrained_entry must be one of 'auto', "
                                         r"'model', 'ema', got 'emma'$"):
        LatentDiffusion(**model, pretrained_entry='emma')
    # a work dir's dumped config keeps the entry its run took: another file (a released
    # one, the EMA weights alone) given to it loads as it is
    path = str(tmp_path / 'released.pt')
    weights = image_dit_weights(4)
    torch.save(weights, path)
    built = LatentDiffusion(**model, pretrained_denoiser=path, pretrained_entry='model')
    built.init_weights()
    assert_equal(built.denoiser.state_dict(), weights)
