"""mmsora.utils.config_keys on a config of one's own that inherits a shipped one
(walk-through au: an OpenMMLab user's configs/my_dit.py): an mmcv 1.x section the
Runner does not read, a DiT decay given as the EMA hook's momentum, an argument one
level too high. Each trained without a word, or was refused without the place meant."""
import os.path as osp

import pytest

from mmsora.utils.cli import UserError
from mmsora.utils.config_keys import check_model_config, check_training_keys
from mmsora.utils.config_loading import load_config
from tests.tiny_models import DEMO

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def own_config(tmp_path, text: str):
    """``my_dit.py`` in ``tmp_path``: the image demo as its base, then ``text``."""
    path = tmp_path / 'my_dit.py'
    path.write_text(f'_base_ = [{osp.join(REPO, DEMO)!r}]\n{text}')
    return load_config(str(path))


def refused(cfg) -> str:
    with pytest.raises(UserError) as info:
        check_training_keys(cfg)
    return str(info.value)


@pytest.mark.parametrize('text, place', [
    ("optimizer = dict(type='AdamW', lr=1e-3)",
     "optim_wrapper = dict(optimizer=dict(type='AdamW', lr=...))"),
    ("lr_config = dict(policy='step', step=[100])",
     "param_scheduler = [dict(type='LinearLR', by_epoch=False, ...), ...]"),
    ('checkpoint_config = dict(interval=37)',
     'default_hooks = dict(checkpoint=dict(interval=...))'),
    ("runner = dict(type='IterBasedRunner', max_iters=100)",
     "train_cfg = dict(type='IterBasedTrainLoop', max_iters=...)"),
    ('optimizer_config = dict(grad_clip=dict(max_norm=1.0))',
     'optim_wrapper = dict(clip_grad=dict(max_norm=...), accumulative_counts=...)'),
    ('fp16 = dict(loss_scale=512.0)', 'tools/train.py --amp'),
])
def test_an_mmcv1_section_is_refused_naming_where_it_goes(tmp_path, text, place):
    """mmengine's Runner reads none of an mmcv 1.x config's sections: the run trained
    at the base's learning rate, schedule and checkpoint interval without a word."""
    cfg = own_config(tmp_path, text + '\n')
    key = text.split(' ')[0]
    assert refused(cfg) == (f"{key} is an mmcv 1.x section, which mmengine's Runner does "
                            f'not read (the run would go on without it): give it as {place} '
                            '(a variable of your own: rename it)')


def test_an_mmcv1_named_variable_the_config_uses_is_left_alone(tmp_path):
    """A variable of the config's own named so, whose value an entry holds, is used:
    no refusal; nor is resume_from = None of an mmcv 1.x runtime (its value is
    nothing)."""
    check_training_keys(own_config(tmp_path, (
        "optimizer = dict(type='AdamW', lr=1e-3)\n"
        'optim_wrapper = dict(optimizer=optimizer)\n'
        'checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=100)\n'
        'default_hooks = dict(checkpoint=checkpoint)\n'
        'total_iters = 10\n'
        'train_cfg = dict(max_iters=total_iters)\n'
        'resume_from = None\n')))
    cfg = own_config(tmp_path, "optimizer = dict(type='AdamW', lr=1e-3)\n"
                               "optim_wrapper = dict(optimizer=dict(type='AdamW', lr=2e-3))\n")
    assert refused(cfg).startswith("optimizer is an mmcv 1.x section")


def test_a_decay_given_as_the_ema_momentum_is_refused(tmp_path):
    """DiT's EMA decay 0.9999 given as mmengine's momentum (1 - decay): the average
    moved 99.99% of the way to the weights each step, so the "EMA" that checkpoints
    hold and tools/infer.py samples was the last step's weights."""
    cfg = own_config(tmp_path, (
        "custom_hooks = [dict(type='EMAHook', momentum=0.9999, update_buffers=True, "
        "priority='ABOVE_NORMAL'), dict(type='RNGStateHook')]\n"))
    assert refused(cfg) == (
        'custom_hooks[0].momentum=0.9999 moves the EMA 99.99% of the way to the weights '
        "each step: it follows them and averages nothing. mmengine's momentum is 1 - "
        'decay: for a decay of 0.9999 give momentum=0.0001')
    cfg.custom_hooks[0].momentum = 0.995
    assert refused(cfg).endswith('for a decay of 0.995 give momentum=0.005')
    cfg.custom_hooks[0].momentum = 0.5  # a fast EMA of a short run (the tests' own)
    check_training_keys(cfg)


def test_an_argument_one_level_too_high_is_named_in_its_place(tmp_path):
    """optim_wrapper.lr (the optimizer's) and model.depth (the denoiser's) were refused
    with the wrapper's or the model's own keys alone."""
    cfg = own_config(tmp_path, 'optim_wrapper = dict(lr=1e-4)\n')
    assert refused(cfg) == ("optim_wrapper: unknown config key 'lr' for OptimWrapper; lr "
                            "is its optimizer's (AdamW): set optim_wrapper.optimizer.lr")
    cfg = own_config(tmp_path, 'model = dict(depth=2)\n')
    with pytest.raises(UserError) as info:
        check_model_config(cfg.model)
    assert str(info.value) == ("model: unknown config key 'depth' for LatentDiffusion; "
                               "depth is its denoiser's (DiT): set model.denoiser.depth")
    # a key that no part takes: the close names, as before
    cfg = own_config(tmp_path, "optim_wrapper = dict(clip_grads=dict(max_norm=1.0))\n")
    assert refused(cfg).startswith("optim_wrapper: unknown config key 'clip_grads' for "
                                   'OptimWrapper; did you mean clip_grad')


def test_a_variable_read_through_base_or_dumped_with_the_run_is_left_alone(tmp_path):
    """The run's dumped config (tools/train.py WORK_DIR/my_dit.py --resume) holds the
    variable's value where it was read, not its name; a child reads a base's variable
    as {{_base_.optimizer}}: both were refused as mmcv 1.x sections."""
    cfg = own_config(tmp_path, "optimizer = dict(type='AdamW', lr=1e-3)\n"
                               'optim_wrapper = dict(optimizer=optimizer)\n')
    dumped = tmp_path / 'dumped' / 'my_dit.py'
    dumped.parent.mkdir()
    cfg.dump(str(dumped))
    check_training_keys(load_config(str(dumped)))
    base = tmp_path / 'base.py'
    base.write_text(f'_base_ = [{osp.join(REPO, DEMO)!r}]\n'
                    "optimizer = dict(type='AdamW', lr=1e-3)\n")
    child = tmp_path / 'child.py'
    child.write_text("_base_ = ['./base.py']\n"
                     'optim_wrapper = dict(optimizer={{_base_.optimizer}})\n')
    check_training_keys(load_config(str(child)))
