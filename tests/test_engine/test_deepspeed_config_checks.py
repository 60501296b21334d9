"""DeepSpeed and FSDP settings refused or filled before a run starts: a JSON file given
to --fsdp (taken for a DeepSpeed config, then refused as 'not an FSDPStrategy preset'),
a train_batch_size that is not the micro-batch x accumulation x processes (DeepSpeed
failed at its start on its own assertion), and the nested "auto" values of Hugging
Face's files (passed to DeepSpeed unfilled, which took its defaults for them)."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmsora.engine.strategies import apply_strategy, fill_auto
from mmsora.engine.strategies.train_options import chosen_strategy
from mmsora.utils.cli import UserError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')

# Hugging Face's ds_config_zero3.json (its docs' ZeRO-3 example) without the optimizer
# and scheduler sections, which mmsora refuses (the config's own are the run's)
HF_ZERO3 = {
    'fp16': {'enabled': 'auto', 'loss_scale': 0, 'loss_scale_window': 1000,
             'initial_scale_power': 16, 'hysteresis': 2, 'min_loss_scale': 1},
    'bf16': {'enabled': 'auto'},
    'zero_optimization': {
        'stage': 3, 'offload_optimizer': {'device': 'cpu', 'pin_memory': True},
        'offload_param': {'device': 'cpu', 'pin_memory': True},
        'overlap_comm': True, 'contiguous_gradients': True, 'sub_group_size': 1e9,
        'reduce_bucket_size': 'auto', 'stage3_prefetch_bucket_size': 'auto',
        'stage3_param_persistence_threshold': 'auto', 'stage3_max_live_parameters': 1e9,
        'stage3_max_reuse_distance': 1e9, 'stage3_gather_16bit_weights_on_model_save': True},
    'gradient_accumulation_steps': 'auto', 'gradient_clipping': 'auto',
    'steps_per_print': 2000, 'train_batch_size': 'auto',
    'train_micro_batch_size_per_gpu': 'auto', 'wall_clock_breakdown': False}


class NoHiddenSizeDenoiser(torch.nn.Module):
    """A denoiser of one's own (given as a class) that has no hidden size."""


def demo(batch=4, accumulate=2, launcher='none'):
    cfg = Config.fromfile(DEMO)  # hidden_size=128
    cfg.train_dataloader.batch_size = batch
    cfg.optim_wrapper.accumulative_counts = accumulate
    cfg.launcher = launcher
    return cfg


def write_json(path, content):
    path.write_text(json.dumps(content))
    return str(path)


def test_fsdp_given_a_json_file_says_what_fsdp_takes(tmp_path):
    ds = write_json(tmp_path / 'ds.json', {'zero_optimization': {'stage': 2}})
    with pytest.raises(UserError) as error:
        chosen_strategy(demo(launcher='pytorch'), fsdp=ds)
    assert str(error.value) == (
        f"--fsdp {ds}: FSDP takes a preset name (fsdp, fsdp_bf16) or a .py file holding "
        "strategy = dict(type='FSDPStrategy', ...); a JSON file is a DeepSpeed config: "
        f'--deepspeed {ds}')
    # a DeepSpeed preset given to --fsdp says where it belongs
    with pytest.raises(UserError, match=r'^--fsdp deepspeed_zero2: not an FSDPStrategy '
                                        r'preset \(DeepSpeed: --deepspeed\)$'):
        chosen_strategy(demo(launcher='pytorch'), fsdp='deepspeed_zero2')


def test_a_train_batch_size_that_does_not_match_is_refused_in_our_words(tmp_path,
                                                                       monkeypatch):
    """4 per process x 2 accumulation steps x 2 processes = 16 samples a step; the
    file says 64. DeepSpeed asserted 'Check batch related parameters.
    train_batch_size is not equal to micro_batch_per_gpu * gradient_acc_step *
    world_size 64 != 4 * 2 * 2' at its start."""
    monkeypatch.setenv('WORLD_SIZE', '2')  # (torchrun's, as launcher_world_size reads)
    ds = write_json(tmp_path / 'ds.json', dict(HF_ZERO3, train_batch_size=64))
    with pytest.raises(UserError) as error:
        apply_strategy(demo(launcher='pytorch'), deepspeed=ds)
    assert str(error.value) == (
        'strategy.config.train_batch_size=64 (the DeepSpeed config) is not the samples per '
        'optimizer step, 4 (train_dataloader.batch_size) x 2 '
        '(optim_wrapper.accumulative_counts) x 2 process(es) = 16: set '
        'strategy.config.train_batch_size=16 or "auto", or drop it')
    # the DeepSpeed config's own numbers are named as its
    config = dict(HF_ZERO3, train_batch_size=64, train_micro_batch_size_per_gpu=4,
                  gradient_accumulation_steps=2)
    with pytest.raises(UserError, match=r'x 2 process\(es\) = 16') as error:
        fill_auto(config, demo(accumulate=1), world_size=2)
    assert '4 (strategy.config.train_micro_batch_size_per_gpu) x 2 ' \
        '(strategy.config.gradient_accumulation_steps)' in str(error.value)
    # the right number trains (and is kept), one process or two
    cfg = apply_strategy(demo(launcher='pytorch'),
                         deepspeed=write_json(tmp_path / 'ok.json',
                                              dict(HF_ZERO3, train_batch_size=16)))
    assert cfg.strategy.config.train_batch_size == 16
    monkeypatch.delenv('WORLD_SIZE')
    assert fill_auto(dict(HF_ZERO3, train_batch_size=8), demo(),
                     world_size=1)['train_batch_size'] == 8


def test_hugging_faces_nested_auto_values_are_filled_from_the_model():
    """Hugging Face fills the ZeRO sizes from the model's hidden size (hidden x hidden,
    0.9 x hidden x hidden, 10 x hidden); they reached DeepSpeed as "auto", which it
    dropped without a word for its defaults (buckets of 500M elements for a model of
    hidden size 128)."""
    zero_config = pytest.importorskip('deepspeed.runtime.zero.config')
    ds = fill_auto(HF_ZERO3, demo(), 'bfloat16', world_size=1)
    zero = ds['zero_optimization']
    assert (zero['reduce_bucket_size'], zero['stage3_prefetch_bucket_size'],
            zero['stage3_param_persistence_threshold']) == (128 * 128, 14745, 1280)
    assert ds['bf16']['enabled'] is True and ds['fp16']['enabled'] is False
    assert ds['gradient_clipping'] == 1.0 and ds['gradient_accumulation_steps'] == 2
    assert 'auto' not in json.dumps(ds) and 'train_batch_size' not in ds
    parsed = zero_config.DeepSpeedZeroConfig(**zero)  # DeepSpeed's reading of it
    assert parsed.reduce_bucket_size == 16384
    assert parsed.prefetch_bucket_size == 14745  # (its alias)
    # before: DeepSpeed drops an "auto" for its default, whatever the model
    unfilled = zero_config.DeepSpeedZeroConfig(**HF_ZERO3['zero_optimization'])
    assert (unfilled.reduce_bucket_size, unfilled.prefetch_bucket_size) == (5e8, 5e7)


def test_an_auto_left_is_refused_by_its_dotted_key():
    config = json.loads(json.dumps(HF_ZERO3))
    config['zero_optimization']['sub_group_size'] = 'auto'  # nothing to fill it from
    config['fp16']['initial_scale_power'] = 'auto'
    with pytest.raises(UserError) as error:
        fill_auto(config, demo())
    assert str(error.value) == (
        'DeepSpeed config: no value for "auto" in [\'fp16.initial_scale_power\', '
        '\'zero_optimization.sub_group_size\']; give them a value in the DeepSpeed config')
    # a config that leaves the hidden size to its class: DiT's default, 1152
    cfg = demo()
    cfg.model.denoiser.pop('hidden_size')
    zero = fill_auto(HF_ZERO3, cfg)['zero_optimization']
    assert (zero['reduce_bucket_size'], zero['stage3_param_persistence_threshold']) == (
        1152 * 1152, 11520)
    # a denoiser of one's own without one: the ZeRO sizes are named with why
    cfg.model.denoiser = dict(type=NoHiddenSizeDenoiser)
    with pytest.raises(UserError) as error:
        fill_auto(HF_ZERO3, cfg)
    assert str(error.value) == (
        'DeepSpeed config: no value for "auto" in [\'zero_optimization.reduce_bucket_size\''
        ', \'zero_optimization.stage3_prefetch_bucket_size\', '
        '\'zero_optimization.stage3_param_persistence_threshold\'] (the ZeRO sizes are '
        'filled from model.denoiser.hidden_size, which the config does not give); give '
        'them a value in the DeepSpeed config')
