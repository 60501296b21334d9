"""init_model (tools/infer.py) on a config that names pretrained weights and no
checkpoint: a Stable Cascade prior's pretrained_path, or model.pretrained_denoiser.
checkpoint=False left them random (the untrained video model was not the image
prior applied frame by frame, as docs/stable_cascade.md describes it), and
tools/infer.py CONFIG stopped with 'no checkpoint given' (walk-through s)."""
import os.path as osp

import pytest
import torch

from mmsora.apis import init_model

CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'


@pytest.fixture
def dit_file(repo_root, tmp_path):
    """A DiT state dict of the tiny config's denoiser, off its initial weights."""
    model, _ = init_model(osp.join(repo_root, CONFIG), checkpoint=False)
    state = model.denoiser.state_dict()
    torch.manual_seed(3)
    state = {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}
    path = str(tmp_path / 'dit.pt')
    torch.save(state, path)
    return path, state


def test_the_config_pretrained_denoiser_is_loaded_without_a_checkpoint(repo_root, dit_file,
                                                                         monkeypatch):
    from mmengine.model import BaseModule
    path, state = dit_file
    dumps = []  # mmengine's per-parameter table: without a log file, a block per
    monkeypatch.setattr(BaseModule, '_dump_init_info',  # parameter in the terminal, 'The
                        lambda self: dumps.append(self))  # value is the same before and
    model, _ = init_model(osp.join(repo_root, CONFIG),     # after calling init_weights'
                          cfg_options={'model.pretrained_denoiser': path})
    assert dumps == [] and '_dump_init_info' not in vars(model)
    for key, value in state.items():
        assert torch.equal(model.denoiser.state_dict()[key], value), key
    assert model.loaded_from == path
    assert model.loaded_weights == "the config's pretrained weights, no checkpoint"
    # checkpoint=False: no weights, as it always meant (a config naming a folder not
    # there, Stable Cascade lite's, still builds)
    model, _ = init_model(osp.join(repo_root, CONFIG), checkpoint=False,
                          cfg_options={'model.pretrained_denoiser': '/nonexistent.pt'})
    assert not any(torch.equal(model.denoiser.state_dict()[k], v) for k, v in state.items()
                   if v.dim() > 1)


def test_a_run_dumped_config_without_checkpoints_is_still_refused(repo_root, dit_file,
                                                                 tmp_path):
    from mmengine.config import Config
    work = tmp_path / 'run'
    work.mkdir()
    Config.fromfile(osp.join(repo_root, CONFIG)).dump(str(work / 'run.py'))  # as a run's
    (work / 'last_checkpoint').write_text(str(work / 'iter_9.pth'))
    with pytest.raises(FileNotFoundError, match='no checkpoint given and none found'):
        init_model(str(work / 'run.py'), cfg_options={'model.pretrained_denoiser': dit_file[0]})


def test_without_pretrained_weights_a_checkpoint_is_still_asked_for(repo_root):
    with pytest.raises(FileNotFoundError, match='no checkpoint given and none found'):
        init_model(osp.join(repo_root, CONFIG))


def test_a_config_trained_in_its_default_work_dir_names_the_run(repo_root, tmp_path,
                                                                 monkeypatch):
    """infer.py CONFIG after tools/train.py CONFIG (work_dirs/NAME by default): the
    refusal names the run that holds the weights (it said only 'pass --checkpoint')."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / 'work_dirs' / osp.splitext(osp.basename(CONFIG))[0]
    run.mkdir(parents=True)
    (run / 'iter_300.pth').write_bytes(b'')
    (run / 'iter_1500.pth').write_bytes(b'')
    name = osp.join('work_dirs', run.name)
    with pytest.raises(FileNotFoundError) as info:
        init_model(osp.join(repo_root, CONFIG), checkpoint_option='--checkpoint CKPT')
    assert str(info.value) == (
        f'no checkpoint given and none found for {osp.join(repo_root, CONFIG)}: pass '
        f'--checkpoint CKPT; its run {name} holds iter_1500.pth: give the run ({name}) '
        'instead of the config')


def test_stable_cascade_prior_without_a_checkpoint_is_the_prior(repo_root, tmp_path):
    from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet
    from mmengine.config import Config
    config = osp.join(repo_root,
                      'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py')
    unet = Config.fromfile(config).model.denoiser.unet.to_dict()
    torch.manual_seed(5)
    released = StableCascadeUNet(**unet)
    with torch.no_grad():
        for p in released.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    released.save_pretrained(tmp_path / 'prior' / 'prior_lite')
    model, _ = init_model(config, cfg_options={
        'model.vae': None,  # (the toy's Stage B folder is made by a tool; not needed)
        'model.text_encoder': None,  # (its CLIP folder too)
        'model.denoiser.pretrained_path': str(tmp_path / 'prior'),
        'model.denoiser.pretrained_subfolder': 'prior_lite'})
    for key, value in released.state_dict().items():
        assert torch.equal(model.denoiser.unet.state_dict()[key], value), key


def test_a_missing_vae_folder_is_named_before_the_model_is_built(repo_root, monkeypatch):
    """tools/infer.py on Stable Cascade lite built the 1.33 B model (30 s, 5.7 GB)
    before naming a Stage B folder that does not exist (walk-through s)."""
    from mmsora.registry import MODELS

    def built(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(MODELS, 'build', built)
    config = osp.join(repo_root,
                      'configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py')
    with pytest.raises(FileNotFoundError, match=r"^StableCascadeDecoder folder "
                                                r"'/nonexistent/sc' does not exist"):
        init_model(config, '/nonexistent/iter_1.pth',
                   cfg_options={'model.vae.pretrained_path': '/nonexistent/sc'})
