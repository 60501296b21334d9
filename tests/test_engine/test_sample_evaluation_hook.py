"""SampleEvaluationHook in a training run: a wrong sampler stops the run before its
first step, and an evaluation that fails comes after the iteration's checkpoint."""
import numpy as np
import pytest

from tests.test_evaluation.test_cli import config_text
from tools import train


def hooked_config(tmp_path, repo_root, sampler='ddim', reference_size=8):
    """The tiny evaluation config of tests/test_evaluation/test_cli.py with an
    evaluation and a checkpoint every 2 iterations."""
    rng = np.random.default_rng(0)
    reference = str(tmp_path / 'ref.npz')
    np.savez(reference, arr_0=rng.integers(
        0, 256, (8, reference_size, reference_size, 3), dtype=np.uint8))
    config = tmp_path / 'hooked.py'
    config.write_text(config_text(repo_root, reference) + f"""
train_cfg = dict(max_iters=3)
default_hooks = dict(checkpoint=dict(interval=2))
custom_hooks = [
    dict(type='EMAHook', momentum=0.01, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='SampleEvaluationHook', interval=2, num_samples=4, batch_size=4,
         sample_cfg=dict(sampler={sampler!r}, num_steps=2),
         metrics=[dict(type='FID', extractor=dict(type='TinyImageExtractor'),
                       reference={reference!r})]),
]
""")
    return str(config)


def test_a_sampler_typo_stops_the_run_before_its_first_step(repo_root, tmp_path):
    """It failed at the first evaluation, `interval` iterations in. The config check
    of tools/train.py names the hook's sample_cfg before the Runner starts (the hook's
    own before_train check stays for runs built without the tool)."""
    from mmsora.utils.cli import UserError
    work = tmp_path / 'work'
    with pytest.raises(UserError, match=r"^custom_hooks\[1\].sample_cfg: unknown sampler "
                                        r"'ddmi' for GaussianDiffusion; choose one of .*did "
                                        r'you mean ddpm, ddim'):
        train.main([hooked_config(tmp_path, repo_root, sampler='ddmi'), '--work-dir',
                    str(work), '--cfg-options', 'default_hooks.checkpoint.interval=1'])
    assert not list(work.glob('iter_*.pth'))  # not one step was taken


def test_a_reference_of_another_size_stops_the_run_before_its_first_step(repo_root,
                                                                        tmp_path):
    """It was checked only at the first evaluation, `interval` iterations in."""
    work = tmp_path / 'work'
    with pytest.raises(ValueError, match=r'ref\.npz holds 16x16 pictures, but the samples '
                                         r'are 8x8 ones: make the reference at that '
                                         r'size \(tools/make_reference.py --image-size 8\)'):
        train.main([hooked_config(tmp_path, repo_root, reference_size=16), '--work-dir',
                    str(work), '--cfg-options', 'default_hooks.checkpoint.interval=1'])
    assert not list(work.glob('iter_*.pth'))  # not one step was taken


def test_a_failing_evaluation_comes_after_the_iterations_checkpoint(repo_root, tmp_path,
                                                                    monkeypatch):
    """The hook evaluated before CheckpointHook saved the same iteration: a failure
    there (out of memory while sampling) lost the iteration's checkpoint."""
    import mmsora.apis

    def failing(*args, **kwargs):
        raise RuntimeError('out of memory while sampling')
    monkeypatch.setattr(mmsora.apis, 'evaluate_model', failing)
    work = tmp_path / 'work'
    with pytest.raises(RuntimeError, match='out of memory while sampling'):
        train.main([hooked_config(tmp_path, repo_root), '--work-dir', str(work)])
    assert (work / 'iter_2.pth').is_file()


def test_the_evaluations_time_is_not_the_next_iterations(repo_root, tmp_path, monkeypatch):
    """The iteration after an evaluation logged the evaluation's time as its
    data_time (and the ETA followed it for the log window)."""
    import json
    import time

    import mmsora.apis

    def slow(*args, **kwargs):
        time.sleep(3)
        return {}
    monkeypatch.setattr(mmsora.apis, 'evaluate_model', slow)
    work = tmp_path / 'work'
    train.main([hooked_config(tmp_path, repo_root), '--work-dir', str(work),
                '--cfg-options', 'default_hooks.logger.interval=1',
                f'experiment_name=eval-time-{tmp_path.name}'])  # (a visualizer of its own)
    scalars = [json.loads(line) for path in work.glob('*/vis_data/scalars.json')
               for line in open(path)]
    after = [s for s in scalars if s.get('step') == 3 and 'data_time' in s]
    # (means over the log window: the 3 s over 3 iterations was 1 s)
    assert after and after[0]['data_time'] < 0.5 and after[0]['time'] < 0.5, scalars


def test_the_hook_checks_its_sampler_itself_in_a_runner_built_without_the_tool():
    """A Runner built in Python (not tools/train.py, whose config check comes first):
    the hook's before_train still names the typo."""
    from types import SimpleNamespace

    from mmsora.diffusion import GaussianDiffusion
    from mmsora.engine.hooks.evaluation_hook import SampleEvaluationHook
    hook = SampleEvaluationHook(interval=2, num_samples=4, sample_cfg=dict(sampler='ddmi'),
                                metrics=[])
    runner = SimpleNamespace(cfg={}, model=SimpleNamespace(diffusion=GaussianDiffusion()))
    with pytest.raises(ValueError, match="unknown sampler 'ddmi' for GaussianDiffusion"):
        hook._check_sampler(runner)
