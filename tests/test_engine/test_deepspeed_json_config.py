"""A DeepSpeed JSON file (DeepSpeed's, Hugging Face's, xtuner's) as the strategy's
config: ``--cfg-options strategy.config=ds.json`` and ``--deepspeed ds.json`` train
with it (read once, where the run's strategy is chosen, its "auto" values filled as a
preset's), and a missing file or bad JSON is refused in one line naming it. (The first
failed with "'str' object has no attribute 'get'", the second with "the file has no
`strategy = dict(...)`".)"""
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
from mmengine.config import Config

from mmsora.engine.strategies.train_options import set_run_strategy
from mmsora.utils.cli import UserError
from tests.launch import RUN, fresh_run_env
from tests.tiny_models import TINY_TRAIN
from tools import estimate_memory, train

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')

# xtuner's zero1 as a JSON file: "auto" where the training config has the value
ZERO1 = {
    'gradient_accumulation_steps': 'auto', 'train_micro_batch_size_per_gpu': 'auto',
    'gradient_clipping': 'auto', 'zero_allow_untested_optimizer': True,
    'zero_force_ds_cpu_optimizer': False,
    'zero_optimization': {'stage': 1, 'overlap_comm': True},
    'fp16': {'enabled': 'auto', 'initial_scale_power': 16}, 'bf16': {'enabled': 'auto'}}


def write_json(path, content):
    path.write_text(json.dumps(content, indent=2))
    return str(path)


def train_two_iters(work, *argv):
    """tools/train.py on the shrunk demo for 2 iterations, in a subprocess (one-process
    DeepSpeed on CPU, gloo); returns the run's dumped config."""
    pytest.importorskip('deepspeed')
    cmd = [sys.executable, '-c', RUN, osp.join(ROOT, 'tools/train.py'), DEMO,
           '--work-dir', str(work), *argv, *TINY_TRAIN, 'model.denoiser.depth=1',
           'train_dataloader.batch_size=4', 'train_dataloader.num_workers=0',
           'train_cfg.max_iters=2', 'default_hooks.checkpoint.interval=2']
    proc = subprocess.run(cmd, env=fresh_run_env(PYTHONPATH=ROOT), cwd=work.parent,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'Iter(train) [2/2]' in out, out[-3000:]
    assert osp.isdir(work / 'iter_2.pth')  # a DeepSpeed checkpoint folder
    return Config.fromfile(str(work / osp.basename(DEMO)))  # (DeepSpeed's .py beside)


def test_strategy_config_as_a_json_file_trains(tmp_path):
    """--cfg-options strategy.config=ds.json on a preset: the file's settings (ZeRO-1
    over the preset's ZeRO-2) train, and the dumped config holds them filled, so that
    the run starts again without the file."""
    ds = write_json(tmp_path / 'ds.json', ZERO1)
    cfg = train_two_iters(tmp_path / 'run', '--deepspeed', 'deepspeed_zero2',
                          '--cfg-options', f'strategy.config={ds}')
    config = cfg.strategy.config
    assert cfg.strategy.type == 'DeepSpeedStrategy'
    assert config.zero_optimization == dict(stage=1, overlap_comm=True)
    assert config.train_micro_batch_size_per_gpu == 4  # 'auto' filled
    assert config.gradient_accumulation_steps == 1
    assert config.gradient_clipping == 1.0  # the demo's optim_wrapper.clip_grad
    assert config.bf16 == dict(enabled=False)
    assert config.fp16 == dict(enabled=False, initial_scale_power=16)


def test_deepspeed_option_takes_a_json_file(tmp_path):
    """--deepspeed ds.json: a DeepSpeedStrategy with the file as its config, whose
    keys --cfg-options strategy.config.KEY=VALUE set as on a preset. Hugging Face's
    train_batch_size="auto" is left to DeepSpeed (micro-batch x accumulation x
    processes; it was refused as an "auto" without a value)."""
    ds = write_json(tmp_path / 'ds.json', dict(ZERO1, train_batch_size='auto'))
    cfg = train_two_iters(tmp_path / 'run', '--deepspeed', ds, '--cfg-options',
                          'strategy.config.zero_optimization.stage=2')
    assert cfg.strategy.type == 'DeepSpeedStrategy'
    assert cfg.strategy.config.zero_optimization == dict(stage=2, overlap_comm=True)
    assert cfg.strategy.config.train_micro_batch_size_per_gpu == 4
    assert 'train_batch_size' not in cfg.strategy.config


@pytest.mark.parametrize('section,ours', [('optimizer', 'optim_wrapper.optimizer'),
                                          ('scheduler', 'param_scheduler')])
def test_an_optimizer_or_scheduler_section_is_refused(section, ours, tmp_path):
    """Hugging Face's files carry them: DeepSpeed ignores an optimizer section next to
    the config's optimizer, and runs a scheduler section's schedule over the config's
    param_scheduler (a second learning-rate schedule, unsaid)."""
    ds = write_json(tmp_path / 'ds.json', dict(ZERO1, **{section: dict(
        type='WarmupLR' if section == 'scheduler' else 'AdamW',
        params=dict(warmup_num_steps='auto') if section == 'scheduler'
        else dict(lr='auto'))}))
    with pytest.raises(UserError, match=rf'^strategy.config.{section}: the training '
                                        rf"config's {ours} is the run's \(DeepSpeed "
                                        rf'would ignore or double it\); drop "{section}" '
                                        'from the DeepSpeed config$'):
        train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path / 'w'), '--deepspeed', ds]))


def test_every_reader_sees_the_files_settings(tmp_path):
    """The file is read where the strategy is chosen: the accumulation it sets splits
    the global batch, and its ZeRO keys are checked, for both routes."""
    ds = write_json(tmp_path / 'ds.json', dict(ZERO1, gradient_accumulation_steps=2))
    for argv in (['--deepspeed', 'deepspeed_zero2', '--cfg-options',
                  f'strategy.config={ds}'], ['--deepspeed', ds, '--cfg-options']):
        cfg = train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path / 'w'), *argv, 'global_batch_size=16']))
        assert cfg.train_dataloader.batch_size == 8  # 16 / (1 process x 2 steps)
        assert cfg.strategy.config.gradient_accumulation_steps == 2
        assert cfg.strategy.config.zero_optimization.stage == 1
    typo = write_json(tmp_path / 'typo.json',
                      dict(ZERO1, zero_optimization=dict(stage=2, overlap_comms=True)))
    with pytest.raises(UserError, match='^strategy.config.zero_optimization.overlap_comms: '
                                        'not a DeepSpeed ZeRO setting; did you mean'):
        train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path / 'w'), '--deepspeed', typo]))
    # the config's own strategy (no --deepspeed) with a file as its config
    cfg = Config(dict(strategy=dict(type='DeepSpeedStrategy', config=ds)))
    strategy = set_run_strategy(cfg)
    assert strategy['config']['gradient_accumulation_steps'] == 2
    assert cfg.strategy.config.zero_optimization.stage == 1


@pytest.mark.parametrize('content,message', [
    (None, r'no such file; give the path of a DeepSpeed JSON config$'),
    ('{"zero_optimization": {"stage": 2,}}',
     r"not valid JSON \(Expecting property name enclosed in double quotes: line 1 "
     r"column 35 \(char 34\)\); fix the file$"),
    ('[1, 2]', r'a DeepSpeed config is a JSON object \(\{...\}\), the file holds a list$')])
def test_a_missing_or_bad_file_is_refused_in_one_line(content, message, tmp_path):
    path = tmp_path / 'ds.json'
    if content is not None:
        path.write_text(content)
    for argv, given in (
            (['--deepspeed', 'deepspeed_zero2', '--cfg-options',
              f'strategy.config={path}'], f'strategy.config={path}'),
            (['--deepspeed', str(path)], f'--deepspeed {path}')):
        for run in (lambda: train.build_train_config(train.parse_args(
                [DEMO, '--work-dir', str(tmp_path / 'w'), *argv])),
                    lambda: estimate_memory.main([DEMO, *argv])):
            with pytest.raises(UserError) as error:
                run()
            text = str(error.value)
            assert '\n' not in text
            assert text.startswith(f'{given}: '), text
            assert re.search(message, text), text


def test_a_config_that_is_neither_a_dict_nor_a_file_is_refused(tmp_path):
    with pytest.raises(UserError, match=r'^strategy.config=3: a DeepSpeed config is a '
                                        r'dict or the path of a DeepSpeed JSON file$'):
        train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path / 'w'), '--deepspeed', 'deepspeed_zero2',
             '--cfg-options', 'strategy.config=3']))
