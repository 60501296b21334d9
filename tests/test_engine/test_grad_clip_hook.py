"""GradClipFromHook: gradient clipping from an iteration on, as Latte's recipe clips
at 0.1 from iteration 100k (configs/dit_xl2_video.py); mmengine's clip_grad clips from
the first step."""
import types

import pytest
import torch
from mmengine.runner import Runner

from mmsora.engine.hooks import GradClipFromHook
from mmsora.utils.cli import UserError
from tests.tiny_models import tiny_cfg


def test_clipping_starts_at_its_iteration(repo_root, tmp_path, monkeypatch):
    cfg = tiny_cfg(repo_root, tmp_path, 6)
    cfg.optim_wrapper.pop('clip_grad')  # (the demo clips at 1.0 from the start)
    cfg.custom_hooks = list(cfg.custom_hooks) + [
        dict(type='GradClipFromHook', begin=3, max_norm=1e-3)]
    runner = Runner.from_cfg(cfg)
    clipped_at, clip = [], torch.nn.utils.clip_grad_norm_

    def recording(params, **kwargs):
        clipped_at.append((runner.iter, kwargs))
        return clip(params, **kwargs)
    monkeypatch.setattr(torch.nn.utils, 'clip_grad_norm_', recording)
    runner.train()
    assert [i for i, _ in clipped_at] == [3, 4, 5]
    assert clipped_at[0][1] == dict(max_norm=1e-3, norm_type=2.0)
    # the logged grad_norm is the clipped step's (mmengine's), as with clip_grad
    assert len(runner.message_hub.get_scalar('train/grad_norm').data[0]) == 6


def test_mistakes_and_deepspeed(capsys):
    with pytest.raises(ValueError, match=r'begin is an iteration \(>= 0\), got -1'):
        GradClipFromHook(begin=-1, max_norm=0.1)
    with pytest.raises(ValueError, match='max_norm must be > 0, got 0'):
        GradClipFromHook(begin=0, max_norm=0)
    hook = GradClipFromHook(begin=10, max_norm=0.1)
    deepspeed = types.SimpleNamespace(optim_wrapper=type('DeepSpeedOptimWrapper', (), {})(),
                                      iter=20)
    hook.before_train(deepspeed)  # a note, and nothing set on DeepSpeed's wrapper
    hook.before_train_iter(deepspeed, 0)
    assert 'DeepSpeedOptimWrapper clips as its strategy says' in capsys.readouterr().err
    assert not hasattr(deepspeed.optim_wrapper, 'clip_grad_kwargs')
    clipping = types.SimpleNamespace(optim_wrapper=types.SimpleNamespace(
        clip_grad_kwargs=dict(max_norm=1.0)))
    with pytest.raises(UserError, match=r"optim_wrapper.clip_grad \(\{'max_norm': 1.0\}\) "
                                        r'clips from the first step already'):
        hook.before_train(clipping)


def test_under_fsdp_it_clips_by_the_whole_gradients_norm(monkeypatch):
    """FSDPGradClipHook makes the wrapper clip by the whole gradient's norm before the
    run, when a config's clip_grad is on; clipping turned on mid-run clipped each
    process's shards by their own norm. The hook sets the same up when it turns on."""
    import torch.distributed.fsdp as fsdp
    from mmengine.optim import OptimWrapper

    from mmsora.engine.strategies import fsdp as ours

    class FakeFSDP(torch.nn.Linear):
        pass
    monkeypatch.setattr(fsdp, 'FullyShardedDataParallel', FakeFSDP)
    model = FakeFSDP(2, 2)
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    runner = types.SimpleNamespace(optim_wrapper=wrapper, model=model, iter=0)
    hook = GradClipFromHook(begin=1, max_norm=0.5)
    hook.before_train(runner)
    hook.before_train_iter(runner, 0)
    assert not wrapper.clip_grad_kwargs
    runner.iter = 1
    hook.before_train_iter(runner, 1)
    assert wrapper.clip_grad_kwargs == dict(max_norm=0.5, norm_type=2.0)
    assert wrapper._clip_grad.func is ours._clip_sharded_grad
    assert wrapper._clip_grad.args == (wrapper, model)
