"""mmsora.utils.config_keys: a training config's value plainly of the wrong type (a str
that --cfg-options left where a number is wanted, True for a count) refused in one line
naming the key as the config has it, before the Runner starts (tools/train.py). It
was a traceback after the Runner's start-up output, with the work dir made."""
import inspect
import numbers
import os.path as osp
import typing
from typing import Optional, Union

import numpy as np
import pytest

from mmsora.utils.cli import UserError
from mmsora.utils.config_keys import check_training_keys
from mmsora.utils.config_loading import load_config
from tests.tiny_models import DEMO, TINY_TRAIN

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def refused(cfg) -> str:
    with pytest.raises(UserError) as info:
        check_training_keys(cfg)
    return str(info.value)


@pytest.mark.parametrize('edit, expected', [
    # a str for an int (DiT's depth: int): range('three') in the Runner's model build
    (lambda c: c.model.denoiser.update(depth='three'),
     "model.denoiser.depth must be a whole number (int), got 'three' (a str)"),
    # a str for a float (AdamW's lr: Union[float, Tensor])
    (lambda c: c.optim_wrapper.optimizer.update(lr='1e-3x'),
     "optim_wrapper.optimizer.lr must be a number (float), got '1e-3x' (a str)"),
    # a bool for an int: True is 1 to Python (the model built, with one head)
    (lambda c: c.model.denoiser.update(num_heads=True),
     'model.denoiser.num_heads must be a whole number (int), got True (a bool)'),
    (lambda c: c.optim_wrapper.optimizer.update(weight_decay=False),
     'optim_wrapper.optimizer.weight_decay must be a number (float), got False (a bool)'),
    # Optional[int] given a str
    (lambda c: c.model.update(train_noise_seed='7'),
     "model.train_noise_seed must be a whole number (int) or None, got '7' (a str)"),
    # a str for a switch: 'false' is true
    (lambda c: c.model.denoiser.update(learn_sigma='false'),
     "model.denoiser.learn_sigma must be True or False (bool), got 'false' (a str)"),
    # nested paths: a scheduler of a list, a default hook, the objective, the dataset,
    # the loader, the loop
    (lambda c: c.param_scheduler[1].update(eta_min='1e-5x'),
     "param_scheduler[1].eta_min must be a number (float) or None, got '1e-5x' (a str)"),
    (lambda c: c.default_hooks.logger.update(interval='ten'),
     "default_hooks.logger.interval must be a whole number (int), got 'ten' (a str)"),
    # (GaussianDiffusion's num_timesteps has no annotation: its default says a number)
    (lambda c: c.model.diffusion.update(num_timesteps='1k'),
     "model.diffusion.num_timesteps must be a number (its default is 1000), got '1k' (a "
     'str)'),
    (lambda c: c.train_dataloader.dataset.update(num_samples='2k'),
     "train_dataloader.dataset.num_samples must be a number (its default is 2048), got "
     "'2k' (a str)"),
    (lambda c: c.train_dataloader.update(num_workers='2x'),
     "train_dataloader.num_workers must be a whole number (int), got '2x' (a str)"),
    (lambda c: c.train_cfg.update(val_interval=True),
     'train_cfg.val_interval=True: a whole number (at least 1)'),  # (its own words)
])
def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(edit, expected):
    cfg = load_config(osp.join(REPO, DEMO))
    check_training_keys(cfg)
    edit(cfg)
    assert refused(cfg) == expected


def test_a_typo_under_the_denoiser_names_model_denoiser():
    """The model's own build (tools/train.py, on the meta device) said 'unknown config
    key ... for DiT', naming no entry; the other entries' messages name theirs."""
    cfg = load_config(osp.join(REPO, DEMO))
    cfg.model.denoiser['hiden_size'] = 64
    assert refused(cfg).startswith("model.denoiser: unknown config key 'hiden_size' for "
                                   'DiT; did you mean hidden_size')
    cfg = load_config(osp.join(REPO, DEMO))
    cfg.model.diffusion['beta_schedul'] = 'linear'
    assert refused(cfg).startswith("model.diffusion: unknown config key 'beta_schedul' for "
                                   'GaussianDiffusion; did you mean beta_schedule')


def test_values_the_class_may_take_are_left_to_it():
    """Ints for floats, whole floats for counts (mmengine takes 4e5), a str an argument
    names among its kinds (DiT's grad_checkpointing='selective', AmpOptimWrapper's
    loss_scale='dynamic'), a bool for a switch, None for an Optional."""
    cfg = load_config(osp.join(REPO, DEMO))
    cfg.model.denoiser.update(grad_checkpointing='selective', class_dropout_prob=0,
                              mlp_ratio=4, learn_sigma=False)
    cfg.model.diffusion.update(learn_sigma=False)
    cfg.model.update(train_noise_seed=None, init_seed=3)
    cfg.optim_wrapper.update(type='AmpOptimWrapper', loss_scale='dynamic', dtype='bfloat16')
    cfg.optim_wrapper.optimizer.update(lr=1, weight_decay=0)
    cfg.param_scheduler[1].update(eta_min=0, T_max=None)
    cfg.train_cfg.max_iters = 4e5
    cfg.train_dataloader.update(shuffle=None, pin_memory=False)
    check_training_keys(cfg)


def parameter(annotation=inspect.Parameter.empty, default=inspect.Parameter.empty):
    return inspect.Parameter('x', inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=default)


@pytest.mark.parametrize('param, value, expected', [
    # no annotation: a number default says a str is wrong (nothing more)
    (parameter(default=0.5), 'half', 'a number (its default is 0.5)'),
    (parameter(default=2), 'two', 'a number (its default is 2)'),
    (parameter(default=2), True, None),
    # a str that reads as a number is the class's to parse (float(scale_factor))
    (parameter(default=0.18215), '0.13025', None),
    (parameter(default=100), '100', None),
    (parameter(default=0.5), '1e-3', None),
    (parameter(default=0.5), '1e-3x', 'a number (its default is 0.5)'),
    (parameter(default=2), '', 'a number (its default is 2)'),
    (parameter(default=True), 'yes', None),
    (parameter(default=None), 'x', None),
    (parameter(), 'x', None),
    # typing's numbers and unions of plain classes
    (parameter(Union[int, float]), 'x', 'a number (int or float)'),
    (parameter(Optional[float]), False, 'a number (float) or None'),
    (parameter(Union[bool, int]), 'x', 'a whole number (int) or True or False (bool)'),
    (parameter(Union[bool, int]), True, None),
    (parameter(Union[int, str]), 'x', None),  # (a str it parses itself)
    (parameter(bool), 1, None),
    (parameter(object), 'x', None),
    (parameter(list), 'x', None),
    (parameter(Optional[list]), True, None),
    (parameter(int), 2.5, 'a whole number (int)'),  # (DiT's TypeError after start-up)
    (parameter(Optional[int]), 64.5, 'a whole number (int) or None'),
    (parameter(Union[bool, int]), 0.5, 'a whole number (int) or True or False (bool)'),
    (parameter(numbers.Integral), float('inf'), 'a whole number (int)'),
    (parameter(int), 4e2, None),  # (whole: left to the class, mmengine takes 4e5)
    (parameter(int), 64.0, None),
    (parameter(Union[int, float]), 2.5, None),
    (parameter(Union[int, str]), 2.5, None),  # (a class beside that the words miss)
    (parameter(float), 2.5, None),
    (parameter(bool), 2.5, None),
    (parameter(default=2), 2.5, None),  # (no annotation: floats are not judged)
    (parameter(numbers.Real), 'x', 'a number'),
    (parameter(numbers.Integral), True, 'a whole number (int)'),
    (parameter(typing.Any), 'x', None),
    (parameter(typing.List[int]), 'x', None),
    (parameter('int'), 'x', None),  # (text that did not evaluate)
])
def test_what_is_judged_by_the_annotation_and_the_default(param, value, expected):
    from mmsora.utils.config_keys import wanted_value
    assert wanted_value(param, value) == expected


@pytest.mark.usefixtures('kept_environ', 'malloc_calls')
@pytest.mark.parametrize('option, expected', [
    ('model.denoiser.depth=three',
     "model.denoiser.depth must be a whole number (int), got 'three' (a str)"),
    ('optim_wrapper.optimizer.lr=1e-3x',
     "optim_wrapper.optimizer.lr must be a number (float), got '1e-3x' (a str)"),
])
def test_train_stops_before_the_work_dir_is_made(repo_root, tmp_path, option, expected):
    """Through tools/train.py: the run stopped with a traceback after the Runner's
    start-up output (the environment, the config), its work dir made."""
    from tools import train
    work = tmp_path / 'w'
    with pytest.raises(UserError) as info:
        train.main([osp.join(repo_root, DEMO), '--work-dir', str(work), '--cfg-options',
                    *TINY_TRAIN, option])
    assert str(info.value) == expected
    assert not work.exists()


def test_the_model_alone_names_an_unknown_type_of_a_part():
    """check_model_config, for a check of the model before it is built (its build named
    the type but not the entry); check_training_keys leaves an unknown type to the
    model's build, which comes first in tools/train.py."""
    from mmsora.utils.config_keys import check_model_config
    model = load_config(osp.join(REPO, DEMO)).model
    check_model_config(model)
    model.denoiser['type'] = 'DiTT'
    with pytest.raises(UserError, match=r"^model\.denoiser: unknown type 'DiTT' in the model "
                                        r'registry; did you mean DiT'):
        check_model_config(model)
    check_model_config(model, types=False)
    model.denoiser['type'] = 'DiT'
    model.denoiser['depth'] = '2'
    with pytest.raises(UserError, match=r"^model\.denoiser\.depth must be a whole number "
                                        r"\(int\), got '2' \(a str\)$"):
        check_model_config(model, types=False)


@pytest.mark.parametrize('edit, expected', [
    # (DiT's depth and hidden_size: int) a TypeError in the model's build, after the
    # Runner's start-up output
    (lambda c: c.model.denoiser.update(depth=3.5),
     'model.denoiser.depth must be a whole number (int), got 3.5 (a float)'),
    (lambda c: c.model.denoiser.update(hidden_size=64.5),
     'model.denoiser.hidden_size must be a whole number (int), got 64.5 (a float)'),
    # numpy's True (read from an array) is judged as Python's is
    (lambda c: c.model.denoiser.update(num_heads=np.True_),
     'model.denoiser.num_heads must be a whole number (int), got np.True_ (a bool)'),
    # (no annotation) a str that does not read as a number at all
    (lambda c: c.model.diffusion.update(num_timesteps='three'),
     "model.diffusion.num_timesteps must be a number (its default is 1000), got 'three' "
     '(a str)'),
])
def test_a_fraction_for_a_whole_number_and_numpy_bools_are_refused(edit, expected):
    cfg = load_config(osp.join(REPO, DEMO))
    edit(cfg)
    assert refused(cfg) == expected


def test_a_number_in_a_str_without_annotation_is_left_to_the_class():
    """AutoencoderKLWrapper(scale_factor='0.13025') takes float(scale_factor) and
    SkipCorruptDataset(max_skipped='100') int(...): both worked before the values were
    judged, and were then refused as 'must be a number'; a whole float for an int
    (hidden_size=64.0, depth=4e0) is the class's too."""
    from mmsora.datasets.skip_corrupt import SkipCorruptDataset
    from mmsora.models.vaes.autoencoder_kl import AutoencoderKLWrapper
    from mmsora.utils.config_keys import accepted_arguments, check_config_values
    vae_params, _ = accepted_arguments(AutoencoderKLWrapper)
    check_config_values(dict(scale_factor='0.13025', shift_factor='0.0'), vae_params,
                        'model.vae')
    with pytest.raises(UserError, match=r"^model\.vae\.scale_factor must be a number \(its "
                                        r"default is 0\.18215\), got 'o\.13' \(a str\)$"):
        check_config_values(dict(scale_factor='o.13'), vae_params, 'model.vae')
    skip_params, _ = accepted_arguments(SkipCorruptDataset)
    check_config_values(dict(max_skipped='100'), skip_params, 'train_dataloader.dataset')
    cfg = load_config(osp.join(REPO, DEMO))
    cfg.model.diffusion.update(num_timesteps='1000')
    cfg.model.denoiser.update(hidden_size=64.0, depth=4e0)
    check_training_keys(cfg)
