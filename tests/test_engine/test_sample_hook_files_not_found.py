"""SampleVisualizationHook turns a FileNotFoundError of a VAE or text encoder folder
(which training never loads) into a warning and training goes on; any other file not
found while sampling (the run's own, a bug's) stops the run, as it did before the hook
hid every FileNotFoundError."""
import errno
import glob
import json
import os.path as osp

import pytest
from mmengine.runner import Runner

import mmsora.engine  # noqa: F401  (registers the hooks)
from mmsora.diffusion.transport import Transport
from mmsora.models.vaes.autoencoder_kl import AutoencoderKLWrapper
from tests.tiny_models import TINY_TRAIN
from tools.train import build_train_config, parse_args

SIT_TINY = 'configs/sit/sit_tiny2_1xb32_1500_shapes16.py'
HOOK = dict(type='SampleVisualizationHook', interval=1, num_samples=1,
            sample_cfg=dict(num_steps=2))


def tiny_sit(repo_root, work_dir, vae_folder):
    """The shrunk SiT demo for 2 steps, sampling every step, decoding through a VAE in
    ``vae_folder``."""
    cfg = build_train_config(parse_args([
        osp.join(repo_root, SIT_TINY), '--work-dir', str(work_dir), '--cfg-options',
        *TINY_TRAIN, 'train_cfg.max_iters=2']))
    cfg.custom_hooks = list(cfg.custom_hooks) + [HOOK]
    cfg.experiment_name = f'{work_dir.parent.name}-{work_dir.name}'  # (one log a test)
    runner = Runner.from_cfg(cfg)
    runner.model.vae = AutoencoderKLWrapper(pretrained_path=str(vae_folder))
    return runner


def sample_hook(runner):
    return next(h for h in runner.hooks if type(h).__name__ == 'SampleVisualizationHook')


def log_of(work_dir) -> str:
    return open(glob.glob(str(work_dir / '*' / '*.log'))[0]).read()


def test_a_missing_vae_folder_is_a_warning_and_training_goes_on(repo_root, tmp_path):
    missing = tmp_path / 'no-vae'
    runner = tiny_sit(repo_root, tmp_path / 'run', missing)
    runner.train()
    assert runner.iter == 2
    log = log_of(tmp_path / 'run')
    assert (f"Iter(sample) [2] no samples (training goes on): VAE folder '{missing}' does "
            'not exist') in log


def test_a_vae_folder_without_weights_is_a_warning(repo_root, tmp_path):
    """The folder is there, its weights not yet (an error that names no file, but the
    folder)."""
    folder = tmp_path / 'vae'
    folder.mkdir()
    (folder / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL'}))
    runner = tiny_sit(repo_root, tmp_path / 'run', folder)
    assert sample_hook(runner).sample(runner, 1) is None
    assert (f"Iter(sample) [1] no samples (training goes on): VAE folder '{folder}' holds "
            "AutoencoderKL's config.json but no weights") in log_of(tmp_path / 'run')


def test_a_file_missing_in_the_vae_folder_is_a_warning(repo_root, tmp_path, monkeypatch):
    """A loader's own error naming the file it did not find, inside the folder."""
    folder = tmp_path / 'vae'
    gone = str(folder / 'diffusion_pytorch_model.safetensors')

    def fails(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, 'No such file or directory', gone)
    monkeypatch.setattr(Transport, 'sample', fails)
    runner = tiny_sit(repo_root, tmp_path / 'run', folder)
    assert sample_hook(runner).sample(runner, 1) is None
    assert 'Iter(sample) [1] no samples (training goes on): [Errno 2]' in log_of(
        tmp_path / 'run')


@pytest.mark.parametrize('error', [
    FileNotFoundError(errno.ENOENT, 'No such file or directory', '/elsewhere/cache.bin'),
    FileNotFoundError('a file of a bug of ours'),
    # a folder's name that is the VAE folder's with more to it is another folder
    FileNotFoundError("folder '{vae}2' does not exist"),
], ids=['a-file-elsewhere', 'no-file-named', 'another-folder'])
def test_another_file_not_found_stops_the_run(repo_root, tmp_path, monkeypatch, error):
    """Even while the VAE folder is missing (the error is not that folder's)."""
    vae = tmp_path / 'no-vae'
    if '{vae}' in str(error):
        error = FileNotFoundError(str(error).format(vae=vae))

    def fails(*args, **kwargs):
        raise error
    monkeypatch.setattr(Transport, 'sample', fails)
    runner = tiny_sit(repo_root, tmp_path / 'run', vae)
    with pytest.raises(FileNotFoundError) as info:
        runner.train()
    assert info.value is error
    assert 'no samples' not in log_of(tmp_path / 'run')


def test_a_missing_text_encoder_folder_is_the_models_and_others_are_not(tmp_path):
    """The text encoder's folder as the VAE's: its loader's line names it."""
    from types import SimpleNamespace

    from mmsora.engine.hooks.sample_visualization_hook import _model_folder_error
    from mmsora.models.text_encoders.hf_text_encoder import HFTextEncoder
    encoder = HFTextEncoder(pretrained_path=str(tmp_path / 'no-t5'))
    model = SimpleNamespace(vae=None, text_encoder=encoder)
    with pytest.raises(FileNotFoundError) as info:
        encoder.encoder  # (loaded on first use)
    assert _model_folder_error(model, info.value)
    assert not _model_folder_error(model, FileNotFoundError(
        errno.ENOENT, 'No such file or directory', str(tmp_path / 'run' / 'samples')))


def test_a_folder_given_as_a_path_object_is_the_models(tmp_path):
    """A wrapper built from Python with ``pretrained_path=Path(...)``: its folder's error
    is the model's (a warning), as for the same folder given as a string."""
    from pathlib import Path
    from types import SimpleNamespace

    from mmsora.engine.hooks.sample_visualization_hook import _model_folder_error
    folder = tmp_path / 'no-vae'
    for given in (str(folder), Path(folder)):
        model = SimpleNamespace(vae=SimpleNamespace(pretrained_path=given))
        missing = FileNotFoundError(errno.ENOENT, 'No such file', str(folder / 'config.json'))
        assert _model_folder_error(model, missing)
        assert _model_folder_error(model, FileNotFoundError(f'VAE folder {given!r} does '
                                                            'not exist'))
        assert not _model_folder_error(model, FileNotFoundError(
            errno.ENOENT, 'No such file', str(tmp_path / 'other.txt')))
