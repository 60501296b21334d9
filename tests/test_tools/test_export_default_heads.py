"""tools/export_denoiser.py --diffusers on a run whose config gives no
model.denoiser.num_heads: the DiT was built with DiT's default heads, which the export
takes. Before, it asked for --num-heads (width 32), wrote the DiT paper's heads for the
width (6 at width 384: not the model's 16), and took a --num-heads that contradicts
them."""
import json

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import Timesteps

from mmsora.utils.cli import UserError
from tests.test_tools.test_export_pipeline import run_checkpoint
from tools.export_denoiser import main as export

# a run config's denoiser without num_heads (DiT's default, 16, built)
NO_HEADS = dict(type='DiT', input_size=4, patch_size=2, in_channels=4, hidden_size=32,
                depth=2, num_classes=10)


def diffusers_output(folder, dit):
    """``(diffusers' output, ours)`` on one input, the export read by
    ``DiTTransformer2DModel.from_pretrained`` (its timestep frequencies the original's,
    to compare the weights exactly)."""
    theirs = DiTTransformer2DModel.from_pretrained(folder, local_files_only=True).eval()
    for m in theirs.modules():
        if isinstance(m, Timesteps):
            m.downscale_freq_shift = 0
    g = torch.Generator().manual_seed(0)
    size = dit.x_embedder.img_size[0]
    x = torch.randn(2, 4, size, size, generator=g)
    t, y = torch.tensor([10, 900]), torch.tensor([1, 3])
    with torch.no_grad():
        return theirs(x, timestep=t, class_labels=y).sample, dit(x, t, y)


@pytest.mark.parametrize('width', [32, 384])
def test_a_run_without_num_heads_is_written_with_dits_default(tmp_path, capsys, width):
    dit, ckpt = run_checkpoint(tmp_path / 'iter_2.pth',
                               denoiser=dict(NO_HEADS, hidden_size=width,
                                             depth=2 if width == 32 else 1))
    assert dit.blocks[0].attn.num_heads == 16  # (what the run trained)
    out = tmp_path / 'DiT-mine'
    export([ckpt, '--diffusers', '--out', str(out)])
    assert ', 16 heads, ' in capsys.readouterr().out
    with open(out / 'config.json') as f:
        assert json.load(f)['num_attention_heads'] == 16
    theirs, ours = diffusers_output(out, dit)
    assert ours.abs().mean() > 1e-2  # (a dead model would prove nothing)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)


def test_other_heads_than_dits_default_are_refused(tmp_path):
    _, ckpt = run_checkpoint(tmp_path / 'iter_2.pth', denoiser=NO_HEADS)
    for flag in ('--diffusers', '--pipeline'):
        with pytest.raises(UserError, match=r"iter_2\.pth: --num-heads 2, but its run config's "
                                            r"model\.denoiser\.num_heads \(not given: DiT's "
                                            r"default\) is 16 \(the heads its weights were "
                                            r'trained with\): leave --num-heads out$'):
            export([ckpt, flag, '--num-heads', '2', '--out', str(tmp_path / 'x')])
    assert not (tmp_path / 'x').exists()
    # the same heads are taken
    export([ckpt, '--diffusers', '--num-heads', '16', '--out', str(tmp_path / 'y')])
    with open(tmp_path / 'y' / 'config.json') as f:
        assert json.load(f)['num_attention_heads'] == 16

