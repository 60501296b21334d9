"""The Python API as a notebook uses it (walk-through n): init_model -> sample_images ->
save_image_grid gives what tools/infer.py saves for the same seeds (it sampled with
the objective's defaults unless every setting was passed), a model from a config
alone, config mistakes in one line, and arguments checked up front."""
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from mmsora.apis import init_model, load_weights, sample_images, save_image_grid
from mmsora.utils.cli import UserError
from tests.tiny_models import DEMO, TINY_DEMO_OPTIONS
from tools import infer

pytestmark = pytest.mark.usefixtures('malloc_calls')


# --cfg-options of the tiny demo as a dict, as a notebook gives them
TINY_DEMO_OPTIONS_DICT = {}
for _option in TINY_DEMO_OPTIONS:
    _key, _value = _option.split('=', 1)
    TINY_DEMO_OPTIONS_DICT[_key] = eval(_value) if _value[0] in '[0123456789' else _value


def test_python_samples_what_infer_saves(repo_root, tmp_path, weights):
    config = osp.join(repo_root, DEMO)
    model, cfg = init_model(config, weights, cfg_options=TINY_DEMO_OPTIONS)
    assert model.sample_cfg == dict(cfg.sample_cfg)  # DDIM 50, guidance 2
    samples = sample_images(model, [0, 1, 2, 3], seeds=0)
    assert samples.shape == (4, 3, 8, 8)
    assert model.diffusion.last_nfe == 50
    save_image_grid(samples, str(tmp_path / 'python.png'))
    infer.main([config, '--checkpoint', weights, '--labels', '0', '1', '2', '3', '--out',
                str(tmp_path / 'infer.png'), '--cfg-options', *TINY_DEMO_OPTIONS])
    ours = np.asarray(Image.open(tmp_path / 'python.png'))
    theirs = np.asarray(Image.open(tmp_path / 'infer.png'))
    assert np.array_equal(ours, theirs)
    # Settings given win over the run's; None leaves the run's; another sampler drops
    # the run's sampler options (the run's fps is for saving, not the sampler).
    sample_images(model, [0], seeds=[3], num_steps=5, cfg_scale=None)
    assert model.diffusion.last_nfe == 5
    sample_images(model, [0], seeds=[3], sampler='ddpm', num_steps=4)
    assert model.diffusion.last_nfe == 4
    model.sample_cfg['fps'] = 8
    sample_images(model, [0], seeds=[3], num_steps=2)  # the run's fps is not the sampler's
    with pytest.raises(ValueError, match=r'fps is not for the sampler'):  # one given is
        sample_images(model, [0], seeds=[3], num_steps=2, fps=8)          # refused


def test_a_model_from_a_config_alone_and_config_mistakes(repo_root, weights):
    config = osp.join(repo_root, DEMO)
    model, _ = init_model(config, checkpoint=False, cfg_options=TINY_DEMO_OPTIONS_DICT)
    assert model.denoiser.pos_embed.shape == (1, 16, 32)  # the dict's sizes: 8 px, width 32
    with pytest.raises(FileNotFoundError, match=r"pass checkpoint= \(checkpoint=False: "
                                                r"the config's model with random weights\)"):
        init_model(config, cfg_options=TINY_DEMO_OPTIONS)
    # a typo in a key, in the list or the dict form: the tools' line (a TypeError was)
    for options in (TINY_DEMO_OPTIONS + ['model.denoiser.hiden_size=64'],
                    dict(TINY_DEMO_OPTIONS_DICT, **{'model.denoiser.hiden_size': 64})):
        with pytest.raises(UserError, match=r"^unknown config key 'hiden_size' for DiT; did "
                                            r'you mean hidden_size'):
            init_model(config, weights, cfg_options=options)
    with pytest.raises(TypeError, match=r'load_weights loads into a LatentDiffusion '
                                        r"\(init_model's model\), not a DiT"):
        load_weights(model.denoiser, weights)
    # dict values are taken as they are (they went through --cfg-options text: a dict
    # failed, a list of dicts was split into strings, the string '2024' became 2024)
    _, cfg = init_model(config, checkpoint=False, cfg_options=dict(
        TINY_DEMO_OPTIONS_DICT, sample_cfg=dict(sampler='ddpm', num_steps=5),
        param_scheduler=[dict(type='ConstantLR', factor=1.0)], experiment_name='2024'))
    assert cfg.sample_cfg == dict(sampler='ddpm', num_steps=5, cfg_scale=2.0)
    assert cfg.param_scheduler == [dict(type='ConstantLR', factor=1.0)]
    assert cfg.experiment_name == '2024'
    with pytest.raises(UserError, match=r"^--cfg-options train_cfg.max_iters=inf: a config "
                                        r'cannot hold inf or nan'):
        init_model(config, checkpoint=False, cfg_options={'train_cfg.max_iters': float('inf')})


class Recorder(torch.nn.Module):
    """A model that records what sample_images asks of it."""

    def __init__(self, text=False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.text_conditioned, self.calls = text, []

    def sample(self, seeds, progress, labels=None, prompts=None, **settings):
        self.calls.append(dict(seeds=seeds, labels=labels, prompts=prompts, **settings))
        return torch.zeros(len(seeds), 3, 2, 2)


def test_arguments_are_checked_up_front():
    text = Recorder(text=True)
    # one prompt, as a string: one sample (it was sliced into its characters)
    assert sample_images(text, prompts='a bike on a road', seeds=5).shape[0] == 1
    assert text.calls[-1]['prompts'] == ['a bike on a road']
    assert text.calls[-1]['seeds'] == [5]
    classes = Recorder()
    sample_images(classes, torch.tensor([1, 2, 3]), seeds=10, batch_size=2)
    assert [c['seeds'] for c in classes.calls] == [[10, 11], [12]]
    assert [c['labels'] for c in classes.calls] == [[1, 2], [3]]
    for call, message in [
            (lambda: sample_images(classes, None, seeds=[0]),
             '^this model is class-conditional: give labels, one per sample$'),
            (lambda: sample_images(text, None, seeds=[0]),
             '^this model is text-conditioned: give prompts, one per sample$'),
            (lambda: sample_images(text, ['a bike rides on the road'], seeds=0),
             r'^this model is text-conditioned: give the captions as prompts=\[...\], not '
             'labels$'),
            (lambda: sample_images(classes, [0, 1], seeds=[0]),
             r'^got 1 seeds for 2 labels: give one seed per sample \(or an int'),
            (lambda: sample_images(classes, [0], seeds=[0], batch_size=0),
             '^batch_size must be >= 1, got 0$')]:
        with pytest.raises(ValueError, match=message):
            call()


def test_saving_mistakes_are_named(tmp_path):
    clips = torch.zeros(2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match=r'got clips of shape \(2, 3, 4, 8, 8\): save them '
                                         r'with save_videos'):
        save_image_grid(clips, str(tmp_path / 'grid.png'))
    with pytest.raises(ValueError, match=r"give a .png or .jpg path, got '.*grid.mp4'; clips "
                                         r'go to save_videos'):
        save_image_grid(clips[:, :, 0], str(tmp_path / 'sub' / 'grid.mp4'))
    assert not (tmp_path / 'sub').exists()  # (PIL failed after the folder was made)


def test_the_loss_takes_a_dataset_batch_as_it_is(repo_root, weights):
    model, _ = init_model(osp.join(repo_root, DEMO), weights, cfg_options=TINY_DEMO_OPTIONS)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    plain = model.loss(latents=x, labels=torch.tensor([0, 1]))['loss']
    torch.manual_seed(0)  # a dataset's batch holds sample_idx; labels as DiT passes a list
    batch = model.loss(latents=x, labels=[0, 1], sample_idx=torch.tensor([4, 5]))['loss']
    assert torch.equal(plain, batch)


def test_a_checkpoint_file_of_a_work_dir_is_that_run(tmp_path):
    """find_run('work_dirs/run/iter_300.pth') (init_model, tools/infer.py RUN) read the
    checkpoint as a config: 'cannot load config ...: not a .py'."""
    from mmsora.apis import find_run
    work = tmp_path / 'run'
    work.mkdir()
    (work / 'run.py').write_text('x = 1\n')
    (work / 'iter_300.pth').write_bytes(b'')
    (work / 'last_checkpoint').write_text(str(work / 'iter_300.pth'))
    assert find_run(str(work / 'iter_300.pth')) == (str(work / 'run.py'), str(work / 'iter_300.pth'))
    # a released file beside another .py (setup.py in the repository's root) is not a
    # run: that .py was executed as the config
    (tmp_path / 'setup.py').write_text('raise SystemExit("run")\n')
    (tmp_path / 'DiT-XL-2-256x256.pt').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r'DiT-XL-2-256x256.pt is a checkpoint, not a '
                                                r'config or a work dir of tools/train.py: give '
                                                r'the config file, and the checkpoint as '
                                                r'--checkpoint'):
        find_run(str(tmp_path / 'DiT-XL-2-256x256.pt'))
