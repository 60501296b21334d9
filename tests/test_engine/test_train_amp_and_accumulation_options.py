"""A one-RTX-4090 user's walk-through of tools/train.py's options: a card preset's
AmpOptimWrapper on a machine without CUDA, gradient accumulation counts that are not
a whole number >= 1, --amp with a config's float16, grad_checkpointing=k above the
depth, and the micro-batches named in the global batch line."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

from mmsora.engine.strategies.train_options import (accumulation_of,
                                                    accumulation_setting, apply_amp)
from mmsora.models.layers.checkpointing import check_checkpoint_every
from mmsora.utils.cli import UserError
from tests.cli_helpers import load_tool, refused
from tools.train import build_train_config, parse_args

pytestmark = pytest.mark.usefixtures('kept_environ', 'fresh_notes')

DEMO = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
PRESET = 'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_24gb.py'
TINY = ['model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'train_dataloader.batch_size=2',
        'train_dataloader.dataset.num_samples=8', 'param_scheduler=[]',
        'train_cfg.max_iters=2', 'custom_hooks=[]']


def train_config(repo_root, tmp_path, *options, config=DEMO, amp=False):
    argv = [osp.join(repo_root, config), '--work-dir', str(tmp_path / 'work')]
    argv += ['--amp'] if amp else []
    return build_train_config(parse_args(argv + ['--cfg-options', *TINY, *options]))


def estimate_memory_main():
    return load_tool('estimate_memory').main


# ----------------------------------------------------------------------------------
# 1. A card preset's AmpOptimWrapper without CUDA
# ----------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path')
@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_a_card_presets_amp_wrapper_trains_on_the_cpu(repo_root, tmp_path, capsys, dtype):
    # A config inheriting the tiny demo with the card presets' wrapper: mmengine's
    # AmpOptimWrapper asserted a GPU after the Runner's start-up.
    config = tmp_path / 'tiny_24gb.py'
    config.write_text(f"_base_ = ['{osp.join(repo_root, DEMO)}']\n"
                      f"optim_wrapper = dict(type='AmpOptimWrapper', dtype='{dtype}', "
                      "loss_scale='dynamic')\n")
    cfg = build_train_config(parse_args([str(config), '--work-dir', str(tmp_path / 'w'),
                                         '--cfg-options', *TINY]))
    wrapper = cfg.optim_wrapper
    assert (wrapper.type, wrapper.dtype, wrapper.device_type) == (
        'AutocastOptimWrapper', 'bfloat16', 'cpu')
    assert 'loss_scale' not in wrapper
    err = capsys.readouterr().err
    assert f'note: optim_wrapper.type=AmpOptimWrapper ({dtype}) needs a GPU' in err
    assert ('float16 autocast is very slow' in err) == (dtype == 'float16')
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert type(runner.optim_wrapper).__name__ == 'AutocastOptimWrapper'
    assert runner.iter == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU path')
def test_the_card_preset_itself_is_converted(repo_root, tmp_path):
    cfg = build_train_config(parse_args([osp.join(repo_root, PRESET), '--work-dir',
                                         str(tmp_path)]))
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.dtype) == (
        'AutocastOptimWrapper', 'bfloat16')


def test_no_amp_trains_a_card_preset_in_full_precision(repo_root, tmp_path, capsys):
    # --cfg-options optim_wrapper.type=OptimWrapper was refused for the preset's dtype
    # (OptimWrapper takes none), and a config key cannot be deleted from the line
    cfg = build_train_config(parse_args([osp.join(repo_root, PRESET), '--work-dir',
                                         str(tmp_path), '--no-amp']))
    assert dict(cfg.optim_wrapper).keys() & {'dtype', 'loss_scale', 'device_type'} == set()
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert 'needs a GPU' not in capsys.readouterr().err
    assert refused(load_tool('train').main, [
        osp.join(repo_root, PRESET), '--work-dir', str(tmp_path / 'w'), '--amp',
        '--no-amp']) == ('--amp and --no-amp exclude each other: give one (--amp: mixed '
                         "precision; --no-amp: fp32, over the config's AmpOptimWrapper)")


def test_an_amp_wrapper_is_kept_on_cuda():
    from mmsora.engine.strategies.train_options import fit_amp_to_device
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', dtype='float16')))
    fit_amp_to_device(cfg, device='cuda')
    assert cfg.optim_wrapper.to_dict() == dict(type='AmpOptimWrapper', dtype='float16')


# ----------------------------------------------------------------------------------
# 2. accumulative_counts: a whole number >= 1
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize('counts', ['0', '-2', '2.5', 'True'])
@pytest.mark.parametrize('global_batch', [False, True])
def test_a_bad_accumulation_count_is_refused_in_one_line(repo_root, tmp_path, counts,
                                                         global_batch):
    options = [f'optim_wrapper.accumulative_counts={counts}']
    options += ['global_batch_size=8'] if global_batch else []
    with pytest.raises(UserError, match=r'^optim_wrapper\.accumulative_counts=\S+: the '
                       r'micro-batches per optimizer step are a whole number >= 1 .*'
                       r'set optim_wrapper\.accumulative_counts=K$'):
        train_config(repo_root, tmp_path, *options)


def test_estimate_memory_refuses_a_bad_accumulation_count(repo_root, capsys):
    main = estimate_memory_main()
    with pytest.raises(UserError, match=r'^optim_wrapper\.accumulative_counts=0: '):
        main([osp.join(repo_root, DEMO), '--cfg-options', *TINY,
              'optim_wrapper.accumulative_counts=0'])
    assert 'GiB' not in capsys.readouterr().out  # no estimate printed


def test_accumulation_of_checks_deepspeed_steps_too():
    cfg = Config(dict(optim_wrapper=dict(accumulative_counts=2),
                      strategy=dict(type='DeepSpeedStrategy',
                                    gradient_accumulation_steps=0)))
    with pytest.raises(UserError, match=r'^strategy\.gradient_accumulation_steps=0: '):
        accumulation_of(cfg)
    cfg.strategy.gradient_accumulation_steps = 2  # (the wrapper's, given, is the same)
    assert accumulation_of(cfg) == 2
    del cfg.optim_wrapper.accumulative_counts
    cfg.strategy.gradient_accumulation_steps = 3
    assert accumulation_of(cfg) == 3


@pytest.mark.parametrize('steps', ['2.0', 'True', '0'])
def test_a_bad_deepspeed_count_is_refused_in_one_line(repo_root, tmp_path, steps):
    """A DeepSpeed count that was not an int fell through to the optimizer wrapper's
    (1): global_batch_size=16 gave batch 16 a process while DeepSpeed accumulated 2.0,
    each optimizer step twice the global batch, unsaid."""
    with pytest.raises(UserError, match=r'^strategy\.config\.gradient_accumulation_steps='
                       rf'{steps}: the micro-batches per optimizer step are a whole number '
                       r'>= 1 .*; set strategy\.config\.gradient_accumulation_steps=K$'):
        build_train_config(parse_args(
            [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'work'),
             '--deepspeed', 'deepspeed_zero2', '--cfg-options', *TINY,
             'train_cfg.max_iters=8', 'global_batch_size=16',
             f'strategy.config.gradient_accumulation_steps={steps}']))


@pytest.mark.parametrize('strategy, setting, value', [
    (dict(config=dict(gradient_accumulation_steps='2')),
     'strategy.config.gradient_accumulation_steps', "'2'"),
    (dict(gradient_accumulation_steps=2.0), 'strategy.gradient_accumulation_steps', '2.0'),
    # (mmengine writes its argument over the config's, 'auto' too: nothing fills that)
    (dict(gradient_accumulation_steps='auto'), 'strategy.gradient_accumulation_steps',
     "'auto'")])
def test_deepspeed_counts_are_checked_as_the_wrappers(strategy, setting, value):
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper'),
                      strategy=dict(type='DeepSpeedStrategy', **strategy)))
    with pytest.raises(UserError, match=rf'^{re.escape(setting)}={re.escape(value)}: '
                       rf'the micro-batches .*; set {re.escape(setting)}=K$'):
        accumulation_of(cfg)
    cfg.strategy = dict(type='DeepSpeedStrategy', config=dict(
        gradient_accumulation_steps='auto'))  # (filled from the wrapper's: 1)
    assert accumulation_of(cfg) == 1


def test_two_different_accumulation_counts_are_refused(repo_root, tmp_path, capsys):
    """DeepSpeedOptimWrapper replaces the optimizer wrapper: its accumulative_counts=4
    was dropped without a word, and DeepSpeed accumulated 2."""
    def run(*options):
        return build_train_config(parse_args(
            [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'work'),
             '--deepspeed', 'deepspeed_zero2', '--cfg-options', *TINY,
             'train_cfg.max_iters=8', 'global_batch_size=16', *options]))

    with pytest.raises(UserError, match=r'^strategy\.config\.gradient_accumulation_steps=2 '
                       r'and optim_wrapper\.accumulative_counts=4: two micro-batch counts '
                       r'per optimizer step \(DeepSpeed would accumulate 2 and drop the '
                       r'other\); give one of them, or the same count to both$'):
        run('strategy.config.gradient_accumulation_steps=2',
            'optim_wrapper.accumulative_counts=4')
    capsys.readouterr()
    cfg = run('strategy.config.gradient_accumulation_steps=4',
              'optim_wrapper.accumulative_counts=4')  # the same count: fine
    assert cfg.train_dataloader.batch_size == 4  # 16 / (1 process x 4)
    assert cfg.strategy.config.gradient_accumulation_steps == 4
    # the wrapper's count not given (mmengine's default, 1): DeepSpeed's alone
    assert 'accumulative_counts' not in Config.fromfile(osp.join(repo_root, DEMO)).optim_wrapper
    assert run('strategy.config.gradient_accumulation_steps=2').train_dataloader.batch_size \
        == 8


TWO_DEEPSPEED_COUNTS = (
    'strategy.gradient_accumulation_steps=2 and strategy.config.gradient_accumulation_steps'
    '=4: two micro-batch counts per optimizer step (DeepSpeed would accumulate 2 and drop '
    'the other); give one of them, or the same count to both')


def test_the_strategys_argument_and_its_config_giving_two_counts_are_refused():
    """mmengine's DeepSpeedStrategy puts its gradient_accumulation_steps argument over
    its config's: a config's 4 was dropped without a word."""
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper'),
                      strategy=dict(type='DeepSpeedStrategy', gradient_accumulation_steps=2,
                                    config=dict(gradient_accumulation_steps=4))))
    with pytest.raises(UserError) as info:
        accumulation_of(cfg)
    assert str(info.value) == TWO_DEEPSPEED_COUNTS
    for same in (2, 'auto'):  # the same count, or the config's left to fill
        cfg.strategy.config.gradient_accumulation_steps = same
        assert accumulation_setting(cfg) == (2, 'strategy.gradient_accumulation_steps')


def test_the_strategys_argument_is_the_count_its_run_config_holds(repo_root, tmp_path):
    """The preset's 'auto' took the optimizer wrapper's count (1) beside the argument's
    2: the run's dumped config, started again, held two counts."""
    def run(*options):
        return build_train_config(parse_args(
            [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'work'),
             '--deepspeed', 'deepspeed_zero2', '--cfg-options', *TINY,
             'train_cfg.max_iters=8', 'global_batch_size=16', *options]))

    with pytest.raises(UserError) as info:
        run('strategy.gradient_accumulation_steps=2',
            'strategy.config.gradient_accumulation_steps=4')
    assert str(info.value) == TWO_DEEPSPEED_COUNTS
    cfg = run('strategy.gradient_accumulation_steps=2')
    assert cfg.strategy.config.gradient_accumulation_steps == 2  # (1 before)
    assert cfg.train_dataloader.batch_size == 8  # 16 / (1 process x 2)
    assert accumulation_setting(cfg) == (2, 'strategy.gradient_accumulation_steps')


def test_a_run_dumped_before_the_count_was_written_into_its_config_starts_again():
    """A run dumped before apply_strategy wrote the argument into the config holds the
    argument's K beside the 1 fill_auto put for 'auto' (the wrapper's default): DeepSpeed
    took K; started again (or resumed) it was refused as two counts (review aq)."""
    cfg = Config(dict(optim_wrapper=dict(type='DeepSpeedOptimWrapper'),
                      strategy=dict(type='DeepSpeedStrategy', gradient_accumulation_steps=2,
                                    config=dict(gradient_accumulation_steps=1))))
    assert accumulation_setting(cfg) == (2, 'strategy.gradient_accumulation_steps')
    cfg.optim_wrapper.accumulative_counts = 1  # a wrapper count given: two counts
    with pytest.raises(UserError, match='two micro-batch counts'):
        accumulation_of(cfg)


@pytest.mark.parametrize('total', ['True', '16.0', '0'])
def test_a_global_batch_that_is_no_whole_number_is_refused(repo_root, tmp_path, total):
    """global_batch_size=True was taken as 1: a batch of 1 a process."""
    with pytest.raises(UserError, match=rf'^global_batch_size={total}: the global batch is '
                       r'a whole number of samples >= 1 \(all processes and accumulation '
                       r'steps together\); set global_batch_size=N, a multiple of 2$'):
        train_config(repo_root, tmp_path, f'global_batch_size={total}',
                     'optim_wrapper.accumulative_counts=2')


# ----------------------------------------------------------------------------------
# 3. --amp keeps the config's dtype
# ----------------------------------------------------------------------------------

def test_amp_keeps_a_float16_the_config_sets_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda *a, **k: True)
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', dtype='float16')))
    apply_amp(cfg, device='cuda')
    assert cfg.optim_wrapper.to_dict() == dict(type='AmpOptimWrapper', dtype='float16',
                                               loss_scale='dynamic')
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper')))  # the default stays
    apply_amp(cfg, device='cuda')
    assert cfg.optim_wrapper.dtype == 'bfloat16'


def test_amp_float16_on_the_cpu_is_bfloat16_with_a_note(repo_root, tmp_path, capsys):
    cfg = train_config(repo_root, tmp_path, 'optim_wrapper.dtype=float16', amp=True)
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.dtype) == (
        'AutocastOptimWrapper', 'bfloat16')
    assert ('note: optim_wrapper.dtype=float16 on the CPU: training in bfloat16 instead'
            in capsys.readouterr().err)


def test_amp_refuses_a_dtype_it_cannot_train_in():
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', dtype='int8')))
    with pytest.raises(UserError, match=r'^optim_wrapper\.dtype=int8: mixed precision'):
        apply_amp(cfg, device='cpu')


@pytest.mark.parametrize('argv', [['--amp', 'fp16'], ['--amp=bf16']])
def test_amp_takes_no_value(repo_root, argv):
    with pytest.raises(UserError, match=r'^--amp takes no value \(got (fp16|bf16)\): .*'
                       r'--amp --cfg-options optim_wrapper\.dtype=float16$'):
        parse_args([osp.join(repo_root, DEMO), *argv])
    # (the config given after --amp is the config)
    assert parse_args(['--amp', osp.join(repo_root, DEMO)]).amp


# ----------------------------------------------------------------------------------
# 4. grad_checkpointing=k above the depth
# ----------------------------------------------------------------------------------

def test_check_checkpoint_every_refuses_k_above_the_depth():
    assert check_checkpoint_every(4, depth=4) == 4
    assert check_checkpoint_every(100) == 100  # (no depth: nothing to compare)
    with pytest.raises(ValueError, match=r"^grad_checkpointing=100 is more than the 4 "
                       r"blocks .*use 0 \(off\), 1 \(every block\) to 4 "):
        check_checkpoint_every(100, depth=4)


def test_train_refuses_grad_checkpointing_above_the_depth(repo_root, tmp_path):
    # (DiT's and VideoDiT's constructors refuse it, through build_model_on_meta)
    with pytest.raises(UserError, match=r'^grad_checkpointing=100 is more than the 2 '
                       r'blocks'):
        train_config(repo_root, tmp_path, 'model.denoiser.grad_checkpointing=100')
    cfg = train_config(repo_root, tmp_path, 'model.denoiser.grad_checkpointing=2')
    assert cfg.model.denoiser.grad_checkpointing == 2


def test_estimate_memory_refuses_grad_checkpointing_above_the_depth(repo_root, capsys):
    """A row 'every 100th block' of a 4-block model was counted as block 0 alone."""
    main = estimate_memory_main()
    with pytest.raises(ValueError, match=r'^grad_checkpointing=100 is more than the 2 '):
        main([osp.join(repo_root, DEMO), '--cfg-options', *TINY,
              '--grad-checkpointing', '0', '100'])


# ----------------------------------------------------------------------------------
# 9. The global batch line names the micro-batches
# ----------------------------------------------------------------------------------

def test_the_global_batch_line_names_the_accumulation(repo_root, tmp_path, capsys):
    cfg = train_config(repo_root, tmp_path, 'global_batch_size=8',
                       'optim_wrapper.accumulative_counts=2')
    assert cfg.train_dataloader.batch_size == 4
    assert ('global_batch_size=8: train_dataloader.batch_size=4 on each of 1 process(es) '
            'x 2 accumulation steps (optim_wrapper.accumulative_counts)'
            in capsys.readouterr().out)


@pytest.mark.parametrize('options, setting', [
    # --deepspeed's preset holds the count only once apply_strategy has loaded it: the
    # split divided by optim_wrapper.accumulative_counts (1), batch 32 a process, and
    # DeepSpeed's 4 micro-batches made each optimizer step 4 global batches
    (['strategy.config.gradient_accumulation_steps=4'],
     'strategy.config.gradient_accumulation_steps'),
    # the preset's 'auto' is filled from the optimizer wrapper's count
    (['optim_wrapper.accumulative_counts=4'], 'optim_wrapper.accumulative_counts')])
def test_the_global_batch_divides_by_deepspeeds_accumulation(repo_root, tmp_path, capsys,
                                                              options, setting):
    cfg = build_train_config(parse_args(
        [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'work'),
         '--deepspeed', 'deepspeed_zero2', '--cfg-options', *TINY,
         'train_cfg.max_iters=8', 'global_batch_size=32', *options]))
    ds = cfg.strategy.config  # (what DeepSpeed runs: 1 process x 8 x 4 = 32)
    assert cfg.train_dataloader.batch_size == ds.train_micro_batch_size_per_gpu == 8
    assert ds.gradient_accumulation_steps == 4
    assert ('global_batch_size=32: train_dataloader.batch_size=8 on each of 1 process(es) '
            f'x 4 accumulation steps ({setting})' in capsys.readouterr().out)


@pytest.mark.parametrize('options, setting', [
    (['strategy.config.gradient_accumulation_steps=4'],
     'strategy.config.gradient_accumulation_steps'),
    (['optim_wrapper.accumulative_counts=4'], 'optim_wrapper.accumulative_counts')])
def test_the_accumulation_refusals_name_the_setting_given(repo_root, tmp_path, options,
                                                          setting):
    """They said (optim_wrapper.accumulative_counts) whatever set the count."""
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(tmp_path / 'work'),
            '--deepspeed', 'deepspeed_zero2', '--cfg-options', *TINY, *options]
    with pytest.raises(UserError, match=r'^train_cfg\.max_iters=10 is not a multiple of '
                       rf'the 4 micro-batches of an optimizer step \({setting}\): '):
        build_train_config(parse_args([*argv, 'train_cfg.max_iters=10']))
    with pytest.raises(UserError, match=r'^default_hooks\.checkpoint\.interval=10 is not a '
                       rf'multiple of the 4 micro-batches of an optimizer step \({setting}\): '):
        build_train_config(parse_args([*argv, 'train_cfg.max_iters=8',
                                       'default_hooks.checkpoint.interval=10']))
