"""DeepSpeed ZeRO presets: xtuner's names resolve, their "auto" values are filled from
the training config, tools/train.py builds a FlexibleRunner config from them, and the
mend lets mmengine 0.10.7's DeepSpeedStrategy start with current DeepSpeed."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from mmsora.engine.strategies import (DEEPSPEED_PRESETS, apply_strategy, fill_auto,
                                      load_strategy, mend_mmengine_deepspeed,
                                      single_process_env)
from mmsora.utils.cli import UserError
from tools import estimate_memory, train

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
# preset -> (ZeRO stage, optimizer offloaded, parameters offloaded)
EXPECTED = {'deepspeed_zero1': (1, False, False), 'deepspeed_zero2': (2, False, False),
            'deepspeed_zero2_offload': (2, True, False),
            'deepspeed_zero3': (3, False, False), 'deepspeed_zero3_offload': (3, True, True)}


def training_cfg(batch=6, accumulate=None, clip=None, wrapper='OptimWrapper', dtype=None):
    cfg = Config(dict(train_dataloader=dict(batch_size=batch),
                      optim_wrapper=dict(type=wrapper, optimizer=dict(type='AdamW'))))
    if accumulate:
        cfg.optim_wrapper.accumulative_counts = accumulate
    if clip:
        cfg.optim_wrapper.clip_grad = clip
    if dtype:
        cfg.optim_wrapper.dtype = dtype
    return cfg


@pytest.mark.parametrize('name', DEEPSPEED_PRESETS)
def test_presets_are_xtuners_and_fill_from_the_config(name):
    assert set(DEEPSPEED_PRESETS) == set(EXPECTED)
    strategy = load_strategy(name)
    assert strategy['type'] == 'DeepSpeedStrategy'
    zero = strategy['config']['zero_optimization']
    stage, offload_optimizer, offload_param = EXPECTED[name]
    assert zero['stage'] == stage
    assert (zero.get('offload_optimizer', {}).get('device') == 'cpu') == offload_optimizer
    assert (zero.get('offload_param', {}).get('device') == 'cpu') == offload_param
    ds = fill_auto(strategy['config'],
                   training_cfg(batch=6, accumulate=4, clip=dict(max_norm=0.5)))
    assert ds['train_micro_batch_size_per_gpu'] == 6
    assert ds['gradient_accumulation_steps'] == 4
    assert ds['gradient_clipping'] == 0.5
    assert ds['fp16']['enabled'] is False and ds['bf16']['enabled'] is False
    assert 'auto' not in str(ds)
    assert strategy['config']['train_micro_batch_size_per_gpu'] == 'auto'  # not mutated


@pytest.mark.parametrize('wrapper,dtype,fp16,bf16', [
    ('OptimWrapper', None, False, False),
    ('AmpOptimWrapper', 'bfloat16', False, True),
    ('AmpOptimWrapper', None, True, False),  # mmengine's AMP default: fp16
    ('AmpOptimWrapper', 'float16', True, False),
    ('AutocastOptimWrapper', None, False, True)])
def test_precision_follows_the_optimizer_wrapper(wrapper, dtype, fp16, bf16):
    cfg = Config.fromfile(DEMO)
    cfg.optim_wrapper.type = wrapper
    if dtype:
        cfg.optim_wrapper.dtype = dtype
    cfg.launcher = 'none'
    apply_strategy(cfg, deepspeed='deepspeed_zero2')
    ds = cfg.strategy.config
    assert (ds.fp16.enabled, ds.bf16.enabled) == (fp16, bf16)


def test_explicit_values_are_kept_and_no_clip_means_zero():
    config = dict(load_strategy('deepspeed_zero1')['config'], gradient_clipping=2.0,
                  train_micro_batch_size_per_gpu=3, bf16=dict(enabled=True))
    ds = fill_auto(config, training_cfg(batch=6))
    assert ds['gradient_clipping'] == 2.0 and ds['train_micro_batch_size_per_gpu'] == 3
    assert ds['bf16']['enabled'] is True and ds['gradient_accumulation_steps'] == 1
    ds = fill_auto(load_strategy('deepspeed_zero1')['config'], training_cfg())
    assert ds['gradient_clipping'] == 0.0  # DeepSpeed's "off"
    with pytest.raises(UserError, match='global norm only'):
        fill_auto(config, training_cfg(clip=dict(type='value', clip_value=1.0)))
    with pytest.raises(UserError, match=r'no value for "auto" in \[.steps_per_print'):
        fill_auto(dict(config, steps_per_print='auto'), training_cfg())


def test_train_py_builds_a_flexible_runner_config(tmp_path):
    cfg = train.build_train_config(train.parse_args(
        [DEMO, '--deepspeed', 'deepspeed_zero3', '--amp', '--work-dir', str(tmp_path),
         '--cfg-options', 'train_dataloader.batch_size=5',
         'optim_wrapper.accumulative_counts=2']))
    demo = Config.fromfile(DEMO)
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.optim_wrapper == dict(type='DeepSpeedOptimWrapper',
                                     optimizer=demo.optim_wrapper.optimizer)
    ds = cfg.strategy.config
    assert cfg.strategy.type == 'DeepSpeedStrategy' and ds.zero_optimization.stage == 3
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (5, 2)
    assert ds.gradient_clipping == demo.optim_wrapper.clip_grad.max_norm
    assert ds.bf16.enabled is True and ds.fp16.enabled is False  # --amp on CPU: bf16
    assert 'model_wrapper_cfg' not in cfg
    assert [h['type'] for h in cfg.custom_hooks].count('ResumeHooksHook') == 1
    env = single_process_env(cfg)  # one process: DeepSpeed's process group of one
    assert {k: env[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')} == dict(
        RANK='0', WORLD_SIZE='1', LOCAL_RANK='0') and int(env['MASTER_PORT']) > 0
    cfg.launcher = 'pytorch'
    assert single_process_env(cfg) == {}


def test_a_config_inheriting_a_preset_trains_with_it(tmp_path):
    path = tmp_path / 'dit_zero2.py'
    path.write_text(f"_base_ = ['{DEMO}', '{ROOT}/configs/_base_/strategies/"
                    "deepspeed_zero2.py']\n")
    cfg = train.build_train_config(train.parse_args([str(path), '--work-dir',
                                                     str(tmp_path)]))
    assert cfg.runner_type == 'FlexibleRunner'
    assert cfg.strategy.config.train_micro_batch_size_per_gpu == 32
    assert cfg.optim_wrapper.type == 'DeepSpeedOptimWrapper'
    plain = train.build_train_config(train.parse_args([DEMO, '--work-dir', str(tmp_path)]))
    assert 'runner_type' not in plain and 'strategy' not in plain


def test_a_preset_on_the_command_line_replaces_the_configs_own_with_a_warning(
        tmp_path, monkeypatch):
    import mmsora.engine.strategies.train_options as options
    warned = []
    monkeypatch.setattr(options, 'print_log', lambda msg, **kw: warned.append(msg))
    path = tmp_path / 'dit_zero2.py'
    path.write_text(f"_base_ = ['{DEMO}', '{ROOT}/configs/_base_/strategies/"
                    "deepspeed_zero2.py']\n")
    for argv, flag, kind in ((['--fsdp'], '--fsdp fsdp', 'FSDPStrategy'),
                             (['--deepspeed', 'deepspeed_zero3'],
                              '--deepspeed deepspeed_zero3', 'DeepSpeedStrategy'),
                             ([], None, 'DeepSpeedStrategy')):
        cfg = train.build_train_config(train.parse_args(
            [str(path), '--work-dir', str(tmp_path), '--launcher', 'pytorch', *argv]))
        assert cfg.strategy.type == kind
        if argv:
            assert warned.pop().startswith(f"{flag} replaces the config's own strategy "
                                           '(DeepSpeedStrategy): none of its fields')
        assert not warned
    assert cfg.strategy.config.zero_optimization.stage == 2


def test_strategy_options_apply_to_the_preset(tmp_path, monkeypatch):
    """--cfg-options strategy.KEY=VALUE set the preset that --deepspeed / --fsdp
    load (they replaced it before), the rest of the preset kept; without a warning
    that the config's own strategy (None: the options' own dict) is replaced."""
    import mmsora.engine.strategies.train_options as options
    warned = []
    monkeypatch.setattr(options, 'print_log', lambda msg, **kw: warned.append(msg))
    cfg = train.build_train_config(train.parse_args(
        [DEMO, '--deepspeed', 'deepspeed_zero3', '--work-dir', str(tmp_path),
         '--cfg-options', 'strategy.config.zero_optimization.stage3_max_live_parameters'
         '=100000000', 'train_cfg.max_iters=2']))
    zero = cfg.strategy.config.zero_optimization
    assert zero.stage3_max_live_parameters == 100000000 and zero.stage == 3
    assert zero.overlap_comm is True and cfg.train_cfg.max_iters == 2
    cfg = train.build_train_config(train.parse_args(
        [DEMO, '--fsdp', '--launcher', 'pytorch', '--work-dir', str(tmp_path),
         '--cfg-options', 'strategy.model_wrapper.mixed_precision.param_dtype=bfloat16']))
    wrapper = cfg.strategy.model_wrapper
    assert wrapper.mixed_precision == dict(param_dtype='bfloat16')
    assert not [w for w in warned if 'replaces' in w], warned
    preset = train.build_train_config(train.parse_args(
        [DEMO, '--fsdp', 'fsdp_bf16', '--launcher', 'pytorch', '--work-dir',
         str(tmp_path)])).strategy.model_wrapper
    assert preset.mixed_precision == dict(param_dtype='bfloat16', reduce_dtype='float32',
                                          buffer_dtype='float32',
                                          cast_root_forward_inputs=False)
    assert preset.backward_prefetch == 'BACKWARD_PRE'
    assert wrapper.backward_prefetch == 'BACKWARD_PRE' and wrapper.auto_wrap_policy
    with pytest.raises(UserError, match='strategy.model_wrapper.type.mixed'):
        train.build_train_config(train.parse_args(
            [DEMO, '--fsdp', '--launcher', 'pytorch', '--work-dir', str(tmp_path),
             '--cfg-options', 'strategy.model_wrapper.type.mixed=1']))

@pytest.mark.parametrize('argv,message', [
    (['--deepspeed', 'deepspeed_zero4'],
     r"unknown deepspeed strategy 'deepspeed_zero4': give a file or one of "
     r"\['deepspeed_zero1', (?!.*fsdp).*'deepspeed_zero3_offload'\]$"),  # not fsdp's
    (['--deepspeed', 'fsdp'], 'not a DeepSpeedStrategy preset'),
    (['--fsdp', 'deepspeed_zero2', '--launcher', 'pytorch'],
     '--fsdp deepspeed_zero2: not an FSDPStrategy preset'),
    (['--cfg-options', 'strategy.model_wrapper.mixed_precision.param_dtype=bfloat16'],
     r"got None \(--cfg-options strategy.KEY=VALUE set a preset when --deepspeed"),
    (['--fsdp', '', '--launcher', 'pytorch'], r"unknown fsdp strategy '': .*\['fsdp', "
                                              r"'fsdp_bf16'\]$"),
    (['--deepspeed', 'deepspeed_zero2', '--fsdp'], 'exclude each other'),
    (['--fsdp'], 'start it with tools/dist_train.sh')])
def test_bad_strategy_options_fail_in_one_line(argv, message, tmp_path):
    with pytest.raises(UserError, match=message):
        train.build_train_config(train.parse_args([DEMO, '--work-dir', str(tmp_path),
                                                   *argv]))
    broken = tmp_path / 'my_zero2.py'  # a preset file of one's own, with a typo
    broken.write_text("strategy = dict(type='DeepSpeedStrategy', zero_optimization=dict(\n")
    with pytest.raises(UserError, match=f'cannot load config {broken}: SyntaxError'):
        train.build_train_config(train.parse_args([DEMO, '--work-dir', str(tmp_path),
                                                   '--deepspeed', str(broken)]))


@pytest.mark.parametrize('argv,message', [
    (['--deepspeed', 'deepspeed_zero4'], "unknown deepspeed strategy 'deepspeed_zero4'"),
    (['--deepspeed', 'fsdp'], 'not a DeepSpeedStrategy preset .FSDP: --fsdp.'),
    (['--fsdp', 'deepspeed_zero2'], '--fsdp deepspeed_zero2: not an FSDPStrategy'),
    (['--fsdp', ''], "unknown fsdp strategy ''"),
    (['--deepspeed', 'deepspeed_zero2', '--fsdp'], 'exclude each other'),
    (['--deepspeed', 'deepspeed_zero2', '--fsdp', ''], 'exclude each other'),
    (['--cfg-options', 'strategy.model_wrapper.mixed_precision.param_dtype=bfloat16'],
     r"got None \(--cfg-options strategy.KEY=VALUE set a preset"),
    # a ZeRO typo: training failed at DeepSpeed's start with the last line of
    # pydantic's message (a URL); the estimate counted the default in its place
    (['--deepspeed', 'deepspeed_zero2', '--cfg-options',
      'strategy.config.zero_optimization.reduce_bucket_sise=200000'],
     r'^strategy.config.zero_optimization.reduce_bucket_sise: not a DeepSpeed ZeRO '
     'setting; did you mean reduce_bucket_size')])
def test_train_and_the_estimate_refuse_a_strategy_alike(argv, message, tmp_path):
    """One choice of strategy (chosen_strategy) behind both tools: the same refusal,
    word for word."""
    messages = []
    for run in (lambda: train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path), '--launcher', 'pytorch', *argv])),
                lambda: estimate_memory.main([DEMO, *argv])):
        with pytest.raises(UserError, match=message) as error:
            run()
        messages.append(str(error.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize('tool', [train, estimate_memory], ids=['train', 'estimate'])
def test_fsdp_may_come_before_the_config(tool, capsys):
    """--fsdp [PRESET] takes an optional value: before the config it took the config
    as the preset and stopped with "required: config"; the config is taken back."""
    for argv, preset in ((['--fsdp', DEMO], 'fsdp'), ([DEMO, '--fsdp'], 'fsdp'),
                         (['--fsdp', 'fsdp_bf16', DEMO], 'fsdp_bf16'),
                         ([DEMO, '--fsdp', 'fsdp_bf16'], 'fsdp_bf16')):
        args = tool.parse_args(argv + ['--launcher', 'pytorch'] * (tool is train))
        assert (args.config, args.fsdp) == (DEMO, preset), argv
    strategy_file = osp.join(ROOT, 'configs/_base_/strategies/fsdp_bf16.py')
    for argv in (['--fsdp'], ['--fsdp', 'fsdp_bf16'], ['--fsdp', strategy_file], []):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        assert 'required: config' in capsys.readouterr().err, argv


def test_mend_lets_mmengines_deepspeed_strategy_start(tmp_path, monkeypatch):
    deepspeed = pytest.importorskip('deepspeed')
    monkeypatch.chdir(tmp_path)  # the strategy makes work_dirs/TIMESTAMP/ where it runs
    from mmengine._strategy import DeepSpeedStrategy
    from mmengine.registry import OPTIMIZERS
    from mmengine.utils import digit_version
    names = mend_mmengine_deepspeed()
    assert {'DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb'} <= set(names)
    if digit_version(deepspeed.__version__) >= digit_version('0.17.0'):
        # The module mmengine 0.10.7 imports is gone: the reason for the mend.
        with pytest.raises(ImportError):
            import deepspeed.runtime.fp16.onebit  # noqa: F401
        assert 'OnebitAdam' not in names
    ds = fill_auto(load_strategy('deepspeed_zero2')['config'], training_cfg())
    for _ in range(2):  # mmengine's own registration fails on a second strategy
        strategy = DeepSpeedStrategy(config=ds)
        assert strategy.config['zero_optimization']['stage'] == 2
    assert OPTIMIZERS.get('FusedAdam') is deepspeed.ops.adam.FusedAdam


def test_prepare_deepspeed_names_a_missing_install(monkeypatch):
    import mmsora.engine.strategies.train_options as options
    cfg = Config.fromfile(DEMO)
    cfg.launcher = 'none'
    assert options.prepare_deepspeed(cfg) is False  # no strategy: nothing to do
    apply_strategy(cfg, deepspeed='deepspeed_zero1')
    monkeypatch.setattr(options.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(UserError, match='DeepSpeed is not installed: pip install'):
        options.prepare_deepspeed(cfg)


def test_load_from_a_file_with_deepspeed_points_to_pretrained_denoiser(tmp_path):
    """mmengine's DeepSpeedStrategy loads folders only (an AssertionError deep in
    DeepSpeed for a file): one line that names the way that works."""
    weights = tmp_path / 'weights.pth'
    torch.save({'state_dict': {}, 'meta': {}}, weights)
    args = train.parse_args([DEMO, '--work-dir', str(tmp_path), '--deepspeed',
                             'deepspeed_zero2', '--load-from', str(weights)])
    with pytest.raises(UserError, match=f'model.pretrained_denoiser={weights}'):
        train.build_train_config(args)


@pytest.mark.parametrize('preset', ['deepspeed_zero1', 'deepspeed_zero2',
                                    'deepspeed_zero2_offload', 'deepspeed_zero3',
                                    'deepspeed_zero3_offload'])
def test_zero_stages_keep_the_ema_partitioned(preset, tmp_path):
    cfg = train.build_train_config(train.parse_args(
        [DEMO, '--work-dir', str(tmp_path), '--deepspeed', preset]))
    hooks = [h for h in cfg.custom_hooks if 'EMA' in h['type']]
    assert [h['type'] for h in hooks] == ['ShardedEMAHook'] and hooks[0]['momentum'] == 0.01
    assert 'ema_type' not in hooks[0]


def test_zero2_leaves_another_average_to_mmengine_and_zero3_refuses_it(tmp_path):
    path = tmp_path / 'swa.py'
    path.write_text(f"_base_ = ['{DEMO}']\ncustom_hooks = [dict(type='EMAHook', "
                    "ema_type='StochasticWeightAverage')]\n")
    cfg = train.build_train_config(train.parse_args(
        [str(path), '--work-dir', str(tmp_path), '--deepspeed', 'deepspeed_zero2']))
    assert [h for h in cfg.custom_hooks if 'EMA' in h['type']] == [
        dict(type='EMAHook', ema_type='StochasticWeightAverage')]
    with pytest.raises(UserError, match='exponential moving average only'):
        train.build_train_config(train.parse_args(
            [str(path), '--work-dir', str(tmp_path), '--deepspeed', 'deepspeed_zero3']))


def test_resume_of_a_plain_file_with_deepspeed_fails_in_one_line(tmp_path):
    weights = tmp_path / 'iter_2.pth'
    torch.save({'state_dict': {}, 'meta': {}}, weights)
    args = train.parse_args([DEMO, '--work-dir', str(tmp_path), '--deepspeed',
                             'deepspeed_zero2', '--resume', str(weights)])
    with pytest.raises(UserError, match='not a DeepSpeed checkpoint folder'):
        train.build_train_config(args)


def test_zero3_keeps_the_sampling_hooks(tmp_path):
    """They sample through the engine's forward on every process (ShardedSampler;
    test_deepspeed_train.py, tests/test_evaluation/test_cli.py); they were refused."""
    path = tmp_path / 'with_samples.py'
    for hook in ('SampleEvaluationHook', 'SampleVisualizationHook'):
        path.write_text(f"_base_ = ['{DEMO}']\ncustom_hooks = [dict(type='EMAHook'), "
                        f"dict(type='{hook}')]\n")
        args = train.parse_args([str(path), '--work-dir', str(tmp_path), '--deepspeed',
                                 'deepspeed_zero3'])
        hooks = train.build_train_config(args).custom_hooks
        assert [h['type'] for h in hooks][:2] == ['ShardedEMAHook', hook]


def test_zero2_ema_refuses_node_local_checkpoints(tmp_path):
    """The partitioned EMA is saved whole in data-parallel rank 0's file, which every
    process reads on resume; with node-local storage other nodes would resume from
    files without it."""
    preset = tmp_path / 'zero2_local.py'
    zero2 = osp.join(ROOT, 'configs/_base_/strategies/deepspeed_zero2.py')
    preset.write_text(f"_base_ = ['{zero2}']\nstrategy = dict(config=dict("
                      "checkpoint=dict(use_node_local_storage=True)))\n")
    with pytest.raises(UserError, match='checkpoint.use_node_local_storage'):
        train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path), '--deepspeed', str(preset)]))


def test_partitions_weights_asks_the_engine_through_its_wrappers():
    """ZeRO-3 is told by the engine (through mmengine's wrapper, which hands attribute
    reads to it); a plain module and an FSDP root (which hands them to the module it
    wraps) are not partitioned by DeepSpeed."""
    from mmengine._strategy.deepspeed import MMDeepSpeedEngineWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel

    from mmsora.engine.strategies.deepspeed import partitions_weights
    from mmsora.utils.fsdp_memory import fake_process_group

    class Engine(torch.nn.Module):
        def __init__(self, stage):
            super().__init__()
            self.module, self.stage = torch.nn.Linear(2, 2), stage

        def zero_optimization_partition_weights(self):
            return self.stage == 3

    assert [partitions_weights(MMDeepSpeedEngineWrapper(model=Engine(stage)))
            for stage in (1, 2, 3)] == [False, False, True]
    assert partitions_weights(Engine(3)) and not partitions_weights(Engine(2))
    assert not partitions_weights(torch.nn.Linear(2, 2))
    with fake_process_group(2):
        root = FullyShardedDataParallel(torch.nn.Linear(2, 2), device_id=torch.device('cpu'))
        assert not partitions_weights(root)


def test_zero_settings_take_deepspeed_s_own_names(tmp_path):
    """stage3_* are DeepSpeed's names (aliases) for the ZeRO-3 settings: accepted by
    the check that refuses typos (test_train_and_the_estimate_refuse_a_strategy_alike)."""
    cfg = train.build_train_config(train.parse_args(
        [DEMO, '--deepspeed', 'deepspeed_zero3', '--work-dir', str(tmp_path),
         '--cfg-options', 'strategy.config.zero_optimization.stage3_max_live_parameters=1']))
    assert cfg.strategy.config.zero_optimization.stage3_max_live_parameters == 1


def test_a_deepspeed_folder_resumes_with_its_own_zero_stage(tmp_path):
    """Without --deepspeed mmengine said 'checkpoint file not found' of the folder;
    ZeRO-3 against a ZeRO-2 folder failed in DeepSpeed's loader with a bare
    AssertionError. Only the folder's file names are read."""
    zero2, zero3 = tmp_path / 'z2' / 'iter_8.pth', tmp_path / 'z3' / 'iter_8.pth'
    for folder, name in ((zero2, 'mp_rank_00_model_states.pt'),
                         (zero3, 'zero_pp_rank_0_mp_rank_00_model_states.pt')):
        folder.mkdir(parents=True)
        (folder / name).write_bytes(b'')

    def build(folder, *argv):
        return train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path / 'w'), '--resume', str(folder), *argv]))
    with pytest.raises(UserError, match=r'iter_8.pth: a DeepSpeed checkpoint folder '
                                        r'\(ZeRO-1/2\): resume it with --deepspeed '
                                        'deepspeed_zero2'):
        build(zero2)  # (only file names are read: no DeepSpeed needed)
    pytest.importorskip('deepspeed')  # the presets below build DeepSpeed's config
    with pytest.raises(UserError, match=r'saved by a ZeRO-1/2 run, resumed with ZeRO-3: '
                                        'DeepSpeed cannot change that'):
        build(zero2, '--deepspeed', 'deepspeed_zero3')
    with pytest.raises(UserError, match=r'saved by a ZeRO-3 run, resumed with ZeRO-2'):
        build(zero3, '--deepspeed', 'deepspeed_zero2')
    for folder, preset in ((zero2, 'deepspeed_zero2'), (zero2, 'deepspeed_zero1'),
                           (zero3, 'deepspeed_zero3')):
        cfg = build(folder, '--deepspeed', preset)
        assert cfg.resume and cfg.load_from == str(folder)
    # saved by 2 processes (one optimizer-states file each), resumed by 1: DeepSpeed's
    # loader stopped with a 30-line traceback (walk-through q)
    for rank in (0, 1):
        (zero2 / f'bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt').write_bytes(b'')
    with pytest.raises(UserError, match=r'iter_8.pth: saved by 2 DeepSpeed processes, this '
                                        r'run has 1: DeepSpeed resumes its partitioned '
                                        r'optimizer state on the same number only'):
        build(zero2, '--deepspeed', 'deepspeed_zero2')
    (zero2 / 'bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt').unlink()
    assert build(zero2, '--deepspeed', 'deepspeed_zero2').resume
