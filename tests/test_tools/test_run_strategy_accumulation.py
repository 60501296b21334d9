"""The accumulation a ``--deepspeed`` preset is given on the command line
(``--cfg-options strategy.config.gradient_accumulation_steps=K``) is in no config until
``apply_strategy``: the tools put the run's strategy in ``cfg.strategy`` first
(``set_run_strategy``), and every reader of the accumulation counts the K.
``tools/estimate_memory.py`` split a global batch of 32 over 2 GPUs as 16 per GPU and
said nothing of the 4 micro-batches; ``tools/train.py``'s note on a config named for
8 processes said a global batch of 8 for 8 x 4."""
import os.path as osp

import pytest

from tests.tiny_models import DEMO, TINY_TRAIN

pytestmark = pytest.mark.usefixtures('kept_environ')  # (tools/train.py sets LOCAL_RANK)

ZERO2_X4 = ['--deepspeed', 'deepspeed_zero2', '--cfg-options', *TINY_TRAIN,
            'strategy.config.gradient_accumulation_steps=4']


def test_estimate_memory_splits_by_the_presets_accumulation(repo_root, capsys):
    from tools import estimate_memory
    out = estimate_memory.main([osp.join(repo_root, DEMO), '--gpus', '2', *ZERO2_X4,
                                'global_batch_size=32'])
    lines = capsys.readouterr().out.splitlines()
    # 2 GPUs x 4 per GPU x 4 micro-batches = 32, as tools/train.py trains it
    assert lines[0] == ('global_batch_size=32: a batch of 4 per GPU on each of --gpus 2 '
                        'x 4 accumulation steps, as tools/train.py trains it')
    header = next(line for line in lines if ', 2 GPU(s), DeepSpeed ZeRO-2' in line)
    assert ', DeepSpeed ZeRO-2 (deepspeed_zero2), 4 micro-batches per optimizer step;' \
        in header
    assert [e['batch_size'] for e in out['estimates']] == [4]


def test_estimate_memory_counts_the_strategys_own_accumulation_argument(repo_root,
                                                                        capsys):
    """mmengine's DeepSpeedStrategy puts ``strategy.gradient_accumulation_steps`` over
    its config's: ZeRO-1, which keeps the whole gradients between micro-batches, was
    counted without them, under a header that said 2 micro-batches."""
    from tools import estimate_memory

    def zero1(*options):
        out = estimate_memory.main([osp.join(repo_root, DEMO), '--gpus', '2',
                                    '--batch-size', '2', '--deepspeed', 'deepspeed_zero1',
                                    '--cfg-options', *TINY_TRAIN, *options])
        header = [line for line in capsys.readouterr().out.splitlines()
                  if 'DeepSpeed ZeRO-1' in line]
        return out['estimates'][0], header[0]

    argument, header = zero1('strategy.gradient_accumulation_steps=2')
    assert ', 2 micro-batches per optimizer step;' in header
    in_config, _ = zero1('strategy.config.gradient_accumulation_steps=2')
    without, _ = zero1()
    assert argument == in_config
    assert argument['zero_buffers'] > without['zero_buffers']


def test_the_named_layout_note_counts_the_presets_accumulation(repo_root, tmp_path,
                                                               capsys):
    from tools.train import build_train_config, parse_args
    config = osp.join(repo_root, 'configs/dit/dit_s2_8xb32_400k_imagenet256.py')

    def err(batch):
        build_train_config(parse_args(
            [config, '--work-dir', str(tmp_path / f'b{batch}'), '--deepspeed',
             'deepspeed_zero2', '--cfg-options', f'train_dataloader.batch_size={batch}',
             'strategy.config.gradient_accumulation_steps=4']))
        return capsys.readouterr().err

    # 1 process x 8 x 4 micro-batches: a global batch of 32 (it said 8)
    assert ('is named for 8 processes x 32 (a global batch of 256); this run has 1: a '
            'global batch of 32 at the same learning rate.') in err(8)
    # 1 x 64 x 4 keeps the recipe's 256: nothing to say (it said a global batch of 64)
    assert 'is named for' not in err(64)
