"""A DiT / fast-DiT user's first day (walk-through p): their train.py / sample.py
flags on tools/train.py and tools/infer.py, and a top-level variable that a derived
config left behind."""
import re

import pytest

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config


def _hints(capsys):
    """The '(did you mean A for --x; B for --y?)' of argparse's last line, by flag."""
    line = capsys.readouterr().err.strip().splitlines()[-1]
    meant = re.search(r'\(did you mean (.*)\?\); see (?:python )?\S+ --help$',
                      line).group(1)
    return {part.rsplit(' for ', 1)[1]: part.rsplit(' for ', 1)[0]
            for part in meant.split('; ')}


def test_dit_train_flags_say_what_to_give(capsys):
    """--log-every, --global-seed, --num-workers and --image-size on tools/train.py
    ended in argparse's bare 'unrecognized arguments'; --epochs read as if epochs
    were iterations."""
    from tools.train import parse_args
    with pytest.raises(SystemExit):
        parse_args(['cfg.py', '--epochs', '1400', '--log-every', '100', '--global-seed', '0',
                    '--num-workers', '4', '--image-size', '256'])
    assert _hints(capsys) == {
        '--epochs': '--cfg-options train_cfg.max_iters=N (iterations: epochs x dataset '
                    'size / global batch)',
        '--log-every': '--cfg-options default_hooks.logger.interval=N '
                       'log_processor.window_size=N',
        '--global-seed': '--cfg-options randomness.seed=N',
        '--num-workers': '--cfg-options train_dataloader.num_workers=N',
        '--image-size': '--cfg-options model.denoiser.input_size=S/8 '
                        'model.latent_shape=[4,S/8,S/8] (latents extracted at --image-size S)'}


def test_the_train_hints_name_keys_the_dit_config_has(repo_root):
    """The keys the hints name are the recipe's own (a typo there would be refused
    by --cfg-options, or set and never read)."""
    cfg = load_config(f'{repo_root}/configs/dit/dit_xl2_8xb32_400k_imagenet256.py')
    apply_cfg_options(cfg, [
        'train_cfg.max_iters=10', 'default_hooks.logger.interval=10',
        'log_processor.window_size=10', 'randomness.seed=3', 'train_dataloader.num_workers=2',
        'model.denoiser.input_size=64', 'model.latent_shape=[4,64,64]'])
    assert cfg.log_processor.window_size == 10 and cfg.default_hooks.logger.interval == 10
    assert cfg.randomness.seed == 3 and cfg.train_dataloader.num_workers == 2
    assert cfg.model.denoiser.input_size == 64 and list(cfg.model.latent_shape) == [4, 64, 64]


def test_dit_sample_image_size_says_a_dit_makes_its_trained_size(capsys):
    """On tools/infer.py --image-size suggested --resolution alone, which an image
    DiT refuses for any other size than its own; --global-seed is --seed there."""
    from tools.infer import parse_args
    with pytest.raises(SystemExit):
        parse_args(['run', '--image-size', '512', '--global-seed', '1'])
    assert _hints(capsys) == {
        '--image-size': '--resolution S (a DiT makes only the size it was trained at: give '
                        'the run or checkpoint of that size)',
        '--global-seed': '--seed'}


def test_a_variable_a_derived_config_left_behind_is_refused(repo_root, tmp_path):
    """README's fast-DiT config sets train_dataloader.dataset.data_root itself:
    --cfg-options data_root=/x was accepted, trained on the old path, and the dumped
    config said data_root='/x'."""
    config = tmp_path / 'fast_dit.py'
    config.write_text(
        f"_base_ = [{repo_root + '/configs/dit/dit_s2_8xb32_400k_imagenet256.py'!r}]\n"
        "train_dataloader = dict(dataset=dict(_delete_=True, type='NpyLatentDataset', "
        "data_root='/mine/features', features_dir='f', labels_dir='l'))\n")
    cfg = load_config(str(config))
    assert cfg.data_root != '/mine/features'  # the base's, which no entry took
    with pytest.raises(UserError, match=r'^--cfg-options data_root=/x: no entry of the config '
                                        r'took its value from the variable data_root \(train_'
                                        r'dataloader.dataset.data_root holds a value of its '
                                        r'own\), so setting it changes nothing: set train_'
                                        r'dataloader.dataset.data_root=/x instead$'):
        apply_cfg_options(cfg, ['data_root=/x'])
    # a wrapped dataset (SkipCorruptDataset) is named too
    cfg.train_dataloader.dataset = dict(type='SkipCorruptDataset',
                                        dataset=dict(cfg.train_dataloader.dataset))
    with pytest.raises(UserError, match=r'set train_dataloader.dataset.dataset.data_root=/x'):
        apply_cfg_options(cfg, ['data_root=/x'])
    # the entry itself, with the variable at the same value, and top-level keys the
    # Runner reads, pass
    apply_cfg_options(cfg, ['train_dataloader.dataset.dataset.data_root=/x', 'data_root=/x',
                            'work_dir=/tmp/w', 'load_from=a.pth'])
    assert cfg.train_dataloader.dataset.dataset.data_root == '/x' and cfg.data_root == '/x'
