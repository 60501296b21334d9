"""tools/export_denoiser.py --diffusers on a fast-DiT training file asked for
--num-heads although the file's args (argparse.Namespace(model='DiT-XL/2', ...))
say which DiT it is (walk-through p)."""
import argparse
import json

import pytest
import torch

from mmsora.models import DiT
from mmsora.utils.cli import UserError
from tools.export_denoiser import main as export


def fast_dit_file(path, args, **dit):
    """A fast-DiT train.py checkpoint ({'model', 'ema', 'opt', 'args'}) of a DiT."""
    state = DiT(**{**dict(input_size=4, patch_size=2, in_channels=4, depth=1,
                          num_classes=3), **dit}).state_dict()
    torch.save({'model': state, 'ema': state, 'opt': {'state': {}, 'param_groups': []},
                'args': args}, path)
    return str(path)


def heads_written(folder):
    with open(folder / 'config.json') as f:
        return json.load(f)['num_attention_heads']


def test_the_heads_come_from_the_files_args(tmp_path, capsys):
    # the size its args.model names, at that size's width: its heads, said
    small = fast_dit_file(tmp_path / 's.pt', argparse.Namespace(model='DiT-S/2', epochs=1),
                          hidden_size=384, num_heads=6)
    export([small, '--diffusers', '--out', str(tmp_path / 'from_model')])
    assert heads_written(tmp_path / 'from_model') == 6
    assert f'note: {small}: 6 heads, those of its args.model, DiT-S/2 (--num-heads N to ' \
        'give others)' in capsys.readouterr().err
    # a num_heads of its own (a dict of args too)
    tiny = fast_dit_file(tmp_path / 't.pt', {'model': 'DiT-S/2', 'num_heads': 4},
                         hidden_size=32, num_heads=4)
    export([tiny, '--diffusers', '--out', str(tmp_path / 'from_heads')])
    assert heads_written(tmp_path / 'from_heads') == 4
    assert f'note: {tiny}: 4 heads, its args.num_heads' in capsys.readouterr().err
    # --num-heads overrides them, without a note
    export([tiny, '--diffusers', '--num-heads', '2', '--out', str(tmp_path / 'given')])
    assert heads_written(tmp_path / 'given') == 2
    assert ' heads, ' not in capsys.readouterr().err  # (no note of where they came from)


def test_a_shrunk_model_under_a_size_s_name_asks_for_the_heads(tmp_path):
    """The heads are not in the weights: a DiT of width 64 saved as args.model
    'DiT-S/2' (the walk-through's) is not given DiT-S's 6."""
    shrunk = fast_dit_file(tmp_path / 'p.pt', argparse.Namespace(model='DiT-S/2'),
                           hidden_size=64, num_heads=2)
    with pytest.raises(UserError, match=r'p\.pt: its args\.model says DiT-S/2 \(width 384, 6 '
                                        r'heads\), but its weights are of width 64: give '
                                        r'--num-heads$'):
        export([shrunk, '--diffusers', '--out', str(tmp_path / 'x')])
    export([shrunk, '--diffusers', '--num-heads', '2', '--out', str(tmp_path / 'y')])
    assert heads_written(tmp_path / 'y') == 2
