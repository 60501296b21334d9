"""tools/export_denoiser.py: a run's denoiser weights alone, as DiT releases them."""
import os

import pytest
import torch
from mmengine.runner import Runner

from mmsora.utils.cli import UserError
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_cfg
from tools import export_denoiser


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A tiny DiT run of 2 iterations with its EMA: (work dir, the trained model)."""
    work = tmp_path_factory.mktemp('run')
    runner = Runner.from_cfg(tiny_cfg(REPO_ROOT, work, 2))
    runner.train()
    return work, runner


def test_the_ema_weights_load_into_a_dit_as_a_released_file(run, tmp_path):
    work, runner = run
    out = tmp_path / 'dit.pt'
    export_denoiser.main([str(work), '--out', str(out)])
    state = torch.load(out, weights_only=True)
    ema = [h for h in runner.hooks if type(h).__name__.endswith('EMAHook')][0]
    averaged = {k[len('module.denoiser.'):]: v for k, v in
                ema.ema_model.state_dict().items() if k.startswith('module.denoiser.')}
    trained = runner.model.denoiser.state_dict()
    assert state.keys() == trained.keys() == averaged.keys()
    assert all(torch.equal(state[k], averaged[k]) for k in state)
    assert any(not torch.equal(state[k], trained[k]) for k in state)  # not the trained
    # DiT's names: a DiT of the same settings loads it strictly, as a released file
    from mmsora.models import DiT
    from mmsora.utils.weight_loading import load_dit_checkpoint
    dit = DiT(**{k: runner.cfg.model.denoiser[k] for k in runner.cfg.model.denoiser
                 if k != 'type'})
    load_dit_checkpoint(dit, str(out))
    # the trained weights, and safetensors
    raw = tmp_path / 'raw.safetensors'
    umask = os.umask(0o022)  # (the check reads the mode the umask gives)
    try:
        export_denoiser.main([str(work / 'iter_2.pth'), '--out', str(raw), '--no-ema'])
    finally:
        os.umask(umask)
    from safetensors.torch import load_file
    state = load_file(str(raw))
    assert all(torch.equal(state[k], trained[k]) for k in trained)
    # as readable as the .pt (safetensors wrote it 0600: others on a shared machine
    # could not read it)
    assert os.stat(raw).st_mode & 0o777 == os.stat(out).st_mode & 0o777
    assert os.stat(raw).st_mode & 0o044


def test_mistakes_are_one_line(run, tmp_path):
    work, _ = run
    with pytest.raises(UserError, match=r'^checkpoint not found: .*nope$'):
        export_denoiser.main([str(tmp_path / 'nope'), '--out', str(tmp_path / 'a.pt')])
    with pytest.raises(UserError, match=r'--out .*a\.npz: give a \.pt, \.pth or '
                                        r'\.safetensors file name'):
        export_denoiser.main([str(work), '--out', str(tmp_path / 'a.npz')])
    with pytest.raises(UserError, match=r'a folder that is neither a work dir with a '
                                        r'checkpoint .*, a DeepSpeed checkpoint folder nor a '
                                        r'diffusers DiT folder: give a checkpoint file$'):
        export_denoiser.main([str(tmp_path), '--out', str(tmp_path / 'a.pt')])


def test_a_copy_of_the_checkpoints_alone_is_a_work_dir(run, tmp_path, capsys):
    """A work dir holding iter_*.pth without last_checkpoint (the checkpoints copied
    alone) was 'neither a DeepSpeed checkpoint folder nor a work dir with a
    last_checkpoint': its highest-numbered checkpoint is taken."""
    import shutil
    work, _ = run
    copy = tmp_path / 'copy'
    copy.mkdir()
    for name in ('iter_1.pth', 'iter_2.pth'):
        if (work / name).exists():
            shutil.copy(work / name, copy / name)
    out = tmp_path / 'dit.pt'
    export_denoiser.main([str(copy), '--out', str(out)])
    assert capsys.readouterr().out.startswith(f"{copy / 'iter_2.pth'} -> {out}: the "
                                              "denoiser's EMA weights")
    direct = tmp_path / 'direct.pt'
    export_denoiser.main([str(work / 'iter_2.pth'), '--out', str(direct)])
    a, b = (torch.load(p, weights_only=True) for p in (out, direct))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
