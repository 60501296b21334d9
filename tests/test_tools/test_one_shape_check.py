"""One weight-shape check: ``tools/train.py --load-from`` refuses a file of another
model before the Runner in the words and by the rule of the loader that would have
refused it in ``init_weights`` (``load_state_dict_checked``). They were written
apart: the loader counted the fixed tables a fine-tune keeps and named ``pos_embed``
first, the check before the Runner did neither."""
import pytest
import torch

from mmsora.registry import MODELS
from mmsora.utils.cli import UserError
from tests.tiny_models import tiny_cfg

pytestmark = pytest.mark.usefixtures('kept_environ')  # (tools/train.py sets LOCAL_RANK)

# Another input size (a fine-tune keeps the config's pos_embed) with another depth,
# and another width.
OTHER_MODELS = [
    ('model.denoiser.input_size=16', 'model.latent_shape=[3,16,16]',
     'train_dataloader.dataset.size=16', 'model.denoiser.depth=3'),
    ('model.denoiser.hidden_size=64',),
]


def refused_before_the_runner(repo_root, work_dir, options, path):
    with pytest.raises(UserError) as info:
        tiny_cfg(repo_root, work_dir, 2, *options, load_from=str(path))
    return str(info.value)


def refused_by_the_loader(repo_root, work_dir, options, path):
    cfg = tiny_cfg(repo_root, work_dir, 2, *options)
    cfg.model.pretrained_denoiser = str(path)
    model = MODELS.build(cfg.model)
    with pytest.raises(ValueError) as info:
        model.init_weights()
    return str(info.value)


def after(message, heading):
    assert message.startswith(heading), message
    return message[len(heading):]


@pytest.mark.parametrize('options', OTHER_MODELS)
def test_load_from_says_what_the_loader_says(repo_root, tmp_path, options):
    model = MODELS.build(tiny_cfg(repo_root, tmp_path / 'a', 2).model)
    dit, run = tmp_path / 'dit.pt', tmp_path / 'iter_2.pth'
    torch.save(model.denoiser.state_dict(), dit)
    torch.save(dict(meta=dict(iter=2), state_dict=model.state_dict()), run)
    for path, heading in ((dit, "its weights are not the config's denoiser: "),
                          (run, "its denoiser is not the config's: ")):
        before = after(refused_before_the_runner(repo_root, tmp_path / 'b', options, path),
                       f'--load-from {path}: {heading}')
        loaded = after(refused_by_the_loader(repo_root, tmp_path / 'c', options, path),
                       f"{path}: its weights are not this model's: ")
        # the same clause: the shapes are the config's before the Runner, the model's
        # in it; a run's checkpoint names its weights under 'denoiser.'
        assert before.replace('e.g. denoiser.', 'e.g. ') == loaded.replace(
            'in the model', 'in the config'), path


# --------------------------------------------------------------------------- #
#          one global batch split: train.py, estimate_memory.py, benchmark.py  #
# --------------------------------------------------------------------------- #
def test_the_three_tools_split_a_global_batch_alike(repo_root, tmp_path, capsys,
                                                     monkeypatch):
    """A config whose DeepSpeed strategy accumulates 2 micro-batches itself: the split
    divided by optim_wrapper.accumulative_counts alone (train.py said 10 on each of 4
    processes and DeepSpeed trained 80 a step; estimate_memory.py said 10 per GPU x 2;
    benchmark.py timed 40 on one process). Each line now names a split whose product
    is the global batch, the same split."""
    import os.path as osp

    from tests.tiny_models import DEMO, TINY_TRAIN
    from tools import benchmark, estimate_memory
    from tools.train import build_train_config, parse_args
    options = ['--cfg-options', *TINY_TRAIN, 'global_batch_size=40',
               'strategy.type=DeepSpeedStrategy', 'strategy.config.zero_optimization.stage=2',
               'strategy.config.gradient_accumulation_steps=2']
    config = osp.join(repo_root, DEMO)
    capsys.readouterr()
    estimate_memory.main([config, '--gpus', '4', *options])
    estimated = capsys.readouterr().out.splitlines()[0]
    assert estimated == ('global_batch_size=40: a batch of 5 per GPU on each of --gpus 4 x 2 '
                         'accumulation steps, as tools/train.py trains it')
    monkeypatch.setattr(benchmark, 'spawn', lambda impl, argv: dict(
        impl=impl, params_m=0.1, step_ms=10.0, samples_per_s=200.0, peak_mem_mb=100.0,
        loss=1.0))
    benchmark.main([config, '--device', 'cpu', '--json', str(tmp_path / 'b.json'), *options])
    timed = capsys.readouterr().out.splitlines()[0]
    assert timed == ("batch: 20 per micro-batch (the config's global_batch_size=40 over 2 "
                     'accumulation steps on one process, as tools/train.py trains it; '
                     '--batch-size N for another)')
    monkeypatch.setenv('WORLD_SIZE', '4')
    cfg = build_train_config(parse_args([config, '--work-dir', str(tmp_path / 'w'),
                                         '--launcher', 'pytorch', *options]))
    assert ('global_batch_size=40: train_dataloader.batch_size=5 on each of 4 process(es) '
            'x 2 accumulation steps (strategy.config.gradient_accumulation_steps)'
            ) in capsys.readouterr().out
    # and the run is what the line says: 5 a micro-batch, 2 of them a step, on 4
    assert cfg.train_dataloader.batch_size == 5
    assert cfg.strategy.config.gradient_accumulation_steps == 2
