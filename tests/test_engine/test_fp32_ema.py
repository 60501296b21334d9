"""FP32ExponentialMovingAverage: the EMA of a bf16 model (DeepSpeed with --amp keeps
the module in bf16) moves as the float32 average does; mmengine's plain EMA of the
same model cannot move at DiT's momentum. FP32EMAHook keeps it exact through the
swaps around validation. --deepspeed switches EMAHook to them."""
import torch
from mmengine.config import Config
from mmengine.model import ExponentialMovingAverage

from mmengine.hooks import EMAHook
from mmengine.registry import init_default_scope

from mmsora.engine import FP32EMAHook, FP32ExponentialMovingAverage
from mmsora.engine.strategies import load_strategy, to_flexible_runner_config


def run(ema_type, steps=200, momentum=1e-3):
    """Weights drift from 1.0 towards 1.5; the EMA follows a bf16 copy of them."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ema_type(model, momentum=momentum, update_buffers=True)
    reference = model.weight.detach().float().clone()
    for i in range(steps):
        with torch.no_grad():
            model.weight.fill_(1.0 + 0.5 * (i + 1) / steps)
        ema.update_parameters(model)
        if i > 0:  # mmengine copies at its first update
            reference.lerp_(model.weight.float(), momentum)
        else:
            reference.copy_(model.weight.float())
    return ema, reference


def test_fp32_ema_of_a_bf16_model_follows_the_fp32_average():
    ema, reference = run(FP32ExponentialMovingAverage)
    assert ema.module.weight.dtype == torch.float32
    torch.testing.assert_close(ema.module.weight, reference, rtol=1e-6, atol=1e-6)
    assert (reference - 1.0).abs().min() > 0.04  # it did move
    plain, _ = run(ExponentialMovingAverage)  # the bf16 average is stuck
    assert plain.module.weight.dtype == torch.bfloat16
    assert (plain.module.weight.float() - reference).abs().min() > 0.03
    # Same state-dict keys as mmengine's (checkpoints stay interchangeable).
    assert ema.state_dict().keys() == plain.state_dict().keys()


def test_fp32_ema_equals_mmengines_on_an_fp32_model():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 3)
    ours = FP32ExponentialMovingAverage(model, momentum=0.1)
    theirs = ExponentialMovingAverage(model, momentum=0.1)
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(torch.randn(3, 3))
        ours.update_parameters(model)
        theirs.update_parameters(model)
    assert torch.equal(ours.module.weight, theirs.module.weight)


def test_deepspeed_switches_the_ema_to_fp32():
    cfg = Config(dict(
        train_dataloader=dict(batch_size=4),
        optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)),
        custom_hooks=[dict(type='EMAHook', momentum=1e-4), dict(type='RNGStateHook')]))
    # Without ZeRO partitions (stage 0); ZeRO-1/2/3 keep ShardedEMAHook instead.
    strategy = load_strategy('deepspeed_zero2')
    strategy['config']['zero_optimization'] = dict(stage=0)
    cfg = to_flexible_runner_config(cfg, strategy, 'bfloat16')
    ema = [h for h in cfg.custom_hooks if h['type'] == 'EMAHook']
    assert ema == [] and [h for h in cfg.custom_hooks if h['type'] == 'FP32EMAHook'] == [
        dict(type='FP32EMAHook', momentum=1e-4, ema_type='FP32ExponentialMovingAverage')]


class FakeRunner:
    def __init__(self, model):
        self.model = model


def swap_round_trip(hook_type):
    """An EMA 1e-4 away from the bf16 weights, swapped in for validation and back."""
    init_default_scope('mmsora')  # as a Runner of an mmsora config does
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    hook = hook_type(momentum=1e-3) if hook_type is FP32EMAHook else hook_type(
        ema_type='FP32ExponentialMovingAverage', momentum=1e-3)
    hook.before_run(FakeRunner(model))
    with torch.no_grad():
        hook.ema_model.module.weight.add_(1e-4)
    before = hook.ema_model.module.weight.clone()
    trained = model.weight.clone()
    hook._swap_ema_parameters()  # before_val_epoch
    hook._swap_ema_parameters()  # after_val_epoch
    return before, hook.ema_model.module.weight, trained, model.weight


def test_fp32_ema_hook_gives_the_average_back_unrounded():
    before, after, trained, weights = swap_round_trip(FP32EMAHook)
    assert torch.equal(after, before) and torch.equal(weights, trained)
    before, after, _, _ = swap_round_trip(EMAHook)  # mmengine's: rounded to bf16
    assert not torch.equal(after, before)
