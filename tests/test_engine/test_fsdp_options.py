"""What --fsdp does to a config (CPU device and state-dict settings, the EMA and
clipping hooks, sampling hooks refused), LossGuardHook's whole-gradient norm over
sharded gradients (2 gloo processes), and the resume mends for mmengine's strategy."""
import os
import os.path as osp

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmsora.engine.hooks.loss_guard_hook import grad_norm, gradient_replicas
from mmsora.engine.strategies import fsdp_on_cpu, load_strategy, mend_mmengine_fsdp
from mmsora.utils.cli import UserError
from tests.launch import free_port
from tools import train

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

DEMO = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')


def fsdp_config(tmp_path, *options):
    args = train.parse_args([DEMO, '--work-dir', str(tmp_path), '--fsdp',
                             '--launcher', 'pytorch', *options])
    return train.build_train_config(args)


def test_fsdp_config_swaps_the_ema_and_adds_the_clip_hook(tmp_path):
    cfg = fsdp_config(tmp_path)
    assert cfg.runner_type == 'FlexibleRunner' and cfg.strategy.type == 'FSDPStrategy'
    hooks = {h['type']: h for h in cfg.custom_hooks}
    assert 'EMAHook' not in hooks and hooks['ShardedEMAHook']['momentum'] == 0.01
    assert hooks['ShardedEMAHook']['update_buffers'] is True
    assert 'FSDPGradClipHook' in hooks
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # stays, clipping included
    if not torch.cuda.is_available():
        assert cfg.strategy.model_wrapper.device_id == 'cpu'


def test_fp16_under_fsdp_asks_for_the_sharded_grad_scaler():
    from mmengine.config import Config

    from mmsora.engine.strategies import to_flexible_runner_config
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', dtype='float16',
                                         optimizer=dict(type='AdamW', lr=1e-4))))
    cfg = to_flexible_runner_config(cfg, load_strategy('fsdp'), 'float16')
    assert cfg.optim_wrapper.use_fsdp is True  # mmengine's ShardedGradScaler


def test_mixed_precision_is_refused_where_it_would_not_train(tmp_path, monkeypatch):
    """float16 gathered weights or gradient reduction need --amp's loss scaling
    (float16 AmpOptimWrapper: a ShardedGradScaler); bfloat16 needs a GPU that has it."""
    def config(*argv):
        return train.build_train_config(train.parse_args(
            [DEMO, '--work-dir', str(tmp_path), '--launcher', 'pytorch', *argv]))

    fp16 = 'strategy.model_wrapper.mixed_precision.param_dtype=float16'
    with pytest.raises(UserError, match='param_dtype and reduce_dtype float16 without '
                                        'loss scaling'):
        config('--fsdp', '--cfg-options', fp16)
    with pytest.raises(UserError, match='mixed_precision reduce_dtype float16'):
        config('--fsdp', 'fsdp_bf16', '--cfg-options',
               'strategy.model_wrapper.mixed_precision.reduce_dtype=float16')
    assert config('--fsdp', 'fsdp_bf16').strategy.type == 'FSDPStrategy'
    # a GPU without bfloat16 (a V100), where --amp is float16 with loss scaling
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported',
                        lambda including_emulation=True: False)
    cfg = config('--fsdp', '--amp', '--cfg-options', fp16)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'float16' and cfg.optim_wrapper.use_fsdp is True
    with pytest.raises(UserError, match='this GPU has no bfloat16'):
        config('--fsdp', 'fsdp_bf16', '--amp')
    # mmengine takes dtypes as torch objects too
    from mmsora.engine.strategies.train_options import check_fsdp_precision
    check_fsdp_precision(dict(model_wrapper=dict(mixed_precision=dict(
        param_dtype=torch.float16))), dict(type='AmpOptimWrapper', dtype=torch.float16))


def test_fsdp_on_cpu_gathers_full_state_dicts_without_the_offload(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the strategy makes work_dirs/TIMESTAMP/ where it runs
    strategy = fsdp_on_cpu(load_strategy('fsdp'))
    assert strategy['model_wrapper']['device_id'] == 'cpu'
    assert strategy['model_wrapper']['auto_wrap_policy'] == dict(
        type='mmsora.transformer_block_wrap_policy')
    sd = strategy['state_dict_cfg']
    assert sd['state_dict_type'] == 'FULL_STATE_DICT'
    for key in ('state_dict_config', 'optim_state_dict_config'):
        assert sd[key]['rank0_only'] is True and sd[key]['offload_to_cpu'] is False
    # mmengine builds these
    from mmengine._strategy.fsdp import FSDPStrategy
    built = FSDPStrategy(state_dict_cfg=sd)
    assert built.state_dict_config.offload_to_cpu is False
    # a config's own choice stays
    local = fsdp_on_cpu(dict(type='FSDPStrategy', state_dict_cfg='local'))
    assert local['state_dict_cfg'] == 'local'


def test_sampling_hooks_stay_under_fsdp(tmp_path):
    """Both sampling hooks sample on every process under --fsdp (ShardedSampler;
    test_fsdp_train.py, tests/test_evaluation/test_cli.py), as under ZeRO-3
    (test_deepspeed_presets.py)."""
    path = tmp_path / 'with_samples.py'
    for hook in ('SampleEvaluationHook', 'SampleVisualizationHook'):
        path.write_text(f"_base_ = ['{DEMO}']\ncustom_hooks = [dict(type='{hook}')]\n")
        args = train.parse_args([str(path), '--work-dir', str(tmp_path), '--fsdp',
                                 '--launcher', 'pytorch'])
        hooks = train.build_train_config(args).custom_hooks
        assert [h['type'] for h in hooks][0] == hook


def test_another_average_is_refused(tmp_path):
    path = tmp_path / 'swa.py'
    path.write_text(f"_base_ = ['{DEMO}']\ncustom_hooks = [dict(type='EMAHook', "
                    "ema_type='StochasticWeightAverage')]\n")
    args = train.parse_args([str(path), '--work-dir', str(tmp_path), '--fsdp',
                             '--launcher', 'pytorch'])
    with pytest.raises(UserError, match='exponential moving average only'):
        train.build_train_config(args)


def _scaler_worker(rank, world, port, out):
    """Save an FSDP model's optimizer state through the mended FSDPStrategy with a
    loss scaler that has moved, load it into a fresh model and wrapper."""
    from types import SimpleNamespace

    from mmengine._strategy.fsdp import FSDPStrategy
    from mmengine.optim import AmpOptimWrapper
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig,
                                        FullyShardedDataParallel as FSDP, StateDictType)
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    amp_optimizer_wrapper.is_cuda_available = lambda: True  # it asserts a GPU

    def build():
        torch.manual_seed(0)
        model = FSDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)),
                     device_id=torch.device('cpu'), use_orig_params=True)
        FSDP.set_state_dict_type(  # as fsdp_on_cpu sets it: gathered on rank 0
            model, StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(rank0_only=True, offload_to_cpu=False),
            FullOptimStateDictConfig(rank0_only=True, offload_to_cpu=False))
        wrapper = AmpOptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=0.1),
                                  dtype='bfloat16', use_fsdp=True)
        wrapper.loss_scaler = ShardedGradScaler(device='cpu', init_scale=1024.0)
        return SimpleNamespace(model=model, optim_wrapper=wrapper)

    try:
        mend_mmengine_fsdp()
        saved = build()
        for _ in range(2):
            saved.optim_wrapper.update_params(saved.model(torch.ones(3, 4)).square().sum())
        saved.optim_wrapper.loss_scaler.update(new_scale=256.0)  # as after an overflow
        state = [FSDPStrategy.optim_state_dict(saved)]  # rank 0's, as the file holds
        dist.broadcast_object_list(state, src=0)
        state = state[0]
        fresh = build()
        FSDPStrategy.load_optim_state_dict(fresh, state)

        def moments(run):  # of the parameters with a non-empty shard here
            state = run.optim_wrapper.optimizer.state
            return [state[p]['exp_avg'] for p in run.model.parameters() if p.numel()]

        loaded, expected = moments(fresh), moments(saved)
        out[rank] = dict(saved_scale=state['loss_scaler']['scale'],
                         loaded_scale=fresh.optim_wrapper.loss_scaler.get_scale(),
                         same_moments=len(loaded) == len(expected) > 0 and all(
                             torch.equal(a, b) for a, b in zip(loaded, expected)))
    finally:
        dist.destroy_process_group()


def test_fsdp_resume_keeps_the_loss_scale_and_optimizer_state():
    out = mp.Manager().dict()
    mp.spawn(_scaler_worker, args=(2, free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        assert out[rank] == dict(saved_scale=256.0, loaded_scale=256.0, same_moments=True)


def test_fsdp_resume_reads_the_checkpoint_into_cpu_memory(monkeypatch):
    from mmengine._strategy.fsdp import FSDPStrategy

    from mmsora.engine.strategies import fsdp
    mend_mmengine_fsdp()
    mend_mmengine_fsdp()  # idempotent: still mmengine's loader underneath
    assert FSDPStrategy.load_checkpoint is fsdp._load_checkpoint_to_cpu
    assert FSDPStrategy._mmsora_load_checkpoint.__module__ == 'mmengine._strategy.fsdp'
    calls = []
    monkeypatch.setattr(FSDPStrategy, '_mmsora_load_checkpoint',
                        lambda self, filename, **kwargs: calls.append(kwargs))
    FSDPStrategy.load_checkpoint(None, 'x.pth', map_location='default')
    FSDPStrategy.load_checkpoint(None, 'x.pth', map_location='cuda:1', strict=True)
    assert calls == [dict(map_location='cpu'), dict(map_location='cuda:1', strict=True)]


class _Wrapper:  # what grad_norm reads of an OptimWrapper
    def __init__(self, params):
        self.optimizer = torch.optim.SGD(params, lr=0.1)


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        # One gradient of 4 numbers held in halves; rank 1 also holds an empty shard.
        full = torch.tensor([3.0, 4.0, 12.0, 84.0])
        shards = [torch.nn.Parameter(torch.zeros(2))]
        if rank == 1:
            shards.append(torch.nn.Parameter(torch.zeros(0)))
        shards[0].grad = full[2 * rank:2 * rank + 2].clone()
        wrapper = _Wrapper(shards)
        results = [grad_norm(wrapper, sharded=True), grad_norm(wrapper)]
        if rank == 1:  # an inf in one shard only: every rank must see it
            shards[0].grad[0] = float('inf')
        results.append(grad_norm(wrapper, sharded=True))
        shards[0].grad[0] = 1.0  # finite again; a NaN loss on rank 0 only
        results.append(grad_norm(wrapper, sharded=True, bad_loss=rank == 0))
        # NO_SHARD: each process holds the whole gradient, counted once
        shards[0].grad = full[:2].clone()
        shards.append(torch.nn.Parameter(torch.zeros(2)))
        shards[-1].grad = full[2:].clone()
        results.append(grad_norm(_Wrapper(shards), sharded=True, replicas=2))
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import ShardingStrategy
        results.append([gradient_replicas(FSDP(torch.nn.Linear(2, 2), device_id=torch.device(
            'cpu'), sharding_strategy=strategy)) for strategy in (
                ShardingStrategy.FULL_SHARD, ShardingStrategy.NO_SHARD)])
        out[rank] = results
    finally:
        dist.destroy_process_group()


def test_loss_guard_norm_over_shards_is_the_whole_gradients():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    assert out[0][0] == out[1][0] == pytest.approx(85.0)  # sqrt(9+16+144+7056)
    assert out[0][1] == pytest.approx(5.0) and out[1][1] == pytest.approx(84.8528, rel=1e-5)
    assert out[0][2] == out[1][2] == float('inf')  # both ranks skip the step
    assert out[0][3] == out[1][3] == float('inf')  # a bad loss on one rank: both skip
    assert out[0][4] == out[1][4] == pytest.approx(85.0)  # replicated: not sqrt(2) x
    assert out[0][5] == out[1][5] == [1, 2]


@pytest.mark.parametrize('given', ['mmengine.EMAHook', 'class', 'our class', 'built'])
def test_the_ema_hook_is_found_however_the_config_gives_it(tmp_path, monkeypatch, given):
    """--fsdp and --deepspeed find the EMA hook by its class: by name with its scope,
    or the class itself, it is switched all the same; a hook given built cannot be
    switched and stops the run with one line."""
    import copy

    from mmengine.hooks import EMAHook

    import mmsora.engine
    from mmsora.utils.config_loading import load_config
    hook = {'mmengine.EMAHook': dict(type='mmengine.EMAHook', momentum=0.01),
            'class': dict(type=EMAHook, momentum=0.01),
            'our class': dict(type=mmsora.engine.EMAHook, momentum=0.01),
            'built': EMAHook(momentum=0.01)}[given]

    def config_with_the_hook(path):
        cfg = load_config(path)
        cfg.custom_hooks = [h for h in cfg.custom_hooks if 'EMA' not in str(h['type'])]
        cfg.custom_hooks.append(copy.deepcopy(hook))  # each run rewrites its own
        return cfg

    monkeypatch.setattr(train, 'load_config', config_with_the_hook)
    for options in (['--fsdp', '--launcher', 'pytorch'], ['--deepspeed', 'deepspeed_zero2'],
                    ['--deepspeed', 'deepspeed_zero3']):
        args = train.parse_args([DEMO, '--work-dir', str(tmp_path), *options])
        if given == 'built':
            with pytest.raises(UserError, match='give it as a config'):
                train.build_train_config(args)
            continue
        cfg = train.build_train_config(args)
        emas = [h for h in cfg.custom_hooks if 'EMA' in str(h['type'])]
        assert [h['type'] for h in emas] == ['ShardedEMAHook'], options
        assert emas[0]['momentum'] == 0.01


def test_a_hook_name_nobody_registered_is_a_bug_not_a_mismatch():
    from mmsora.engine.strategies.deepspeed import _is
    assert _is(dict(type='EMAHook'), 'EMAHook', 'FP32EMAHook')
    with pytest.raises(KeyError, match="no hook registered as 'EMAHok'"):
        _is(dict(type='EMAHook'), 'FP32EMAHook', 'EMAHok')
