"""FP32ExponentialMovingAverage: the EMA of a bf16 model (DeepSpeed with --amp keeps
the module in bf16) moves as the float32 average does; mmengine's plain EMA of the
same model cannot move at DiT's momentum. --deepspeed switches EMAHook to it."""
import torch
from mmengine.config import Config
from mmengine.model import ExponentialMovingAverage

from mmsora.engine import FP32ExponentialMovingAverage
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
    cfg = to_flexible_runner_config(cfg, load_strategy('deepspeed_zero2'), 'bfloat16')
    ema = [h for h in cfg.custom_hooks if h['type'] == 'EMAHook']
    assert ema == [dict(type='EMAHook', momentum=1e-4,
                        ema_type='FP32ExponentialMovingAverage')]
