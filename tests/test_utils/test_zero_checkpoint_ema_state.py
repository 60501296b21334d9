"""A DeepSpeed folder read for its EMA weights alone (``read_zero_checkpoint(folder,
trained=False)``: tools/infer.py, tools/test.py and tools/export_denoiser.py by default)
says that it holds an EMA and the EMA's count of updates: which weights were taken and
how young the EMA is were asked of the client-state file again, read four times for one
load."""
import pytest
import torch
from mmengine.runner import Runner

import mmsora.utils.zero_checkpoint as zero_checkpoint
from mmsora.apis import init_model
from tests.conftest import REPO_ROOT
from tests.tiny_models import tiny_cfg

SAID = 'still hold 98% of their initial weights after 3 updates (momentum 0.01)'


@pytest.fixture(scope='module')
def zero_folder(tmp_path_factory):
    """The shrunk demo trained 3 iterations (EMA momentum 0.01), its checkpoint laid
    out as a ZeRO-1/2 folder's client state: (work dir, folder, the checkpoint)."""
    work = tmp_path_factory.mktemp('zero_ema_run')
    Runner.from_cfg(tiny_cfg(REPO_ROOT, work, 3)).train()
    obj = torch.load(str(work / 'iter_3.pth'), weights_only=False)
    folder = work / 'zero' / 'iter_3.pth'
    folder.mkdir(parents=True)
    torch.save({'state_dict': obj['state_dict'], 'ema_state_dict': obj['ema_state_dict'],
                'meta': {'cfg': obj['meta']['cfg'], 'iter': 3}},
               folder / 'mp_rank_00_model_states.pt')
    return work, str(folder), obj


@pytest.fixture
def reads(monkeypatch):
    """The files of a DeepSpeed folder read, in order."""
    done, read = [], zero_checkpoint.load_deepspeed_file

    def counted(path, *args, **kwargs):
        done.append(path)
        return read(path, *args, **kwargs)
    monkeypatch.setattr(zero_checkpoint, 'load_deepspeed_file', counted)
    return done


def test_the_ema_read_alone_comes_with_its_count(zero_folder):
    _, folder, obj = zero_folder
    read = zero_checkpoint.read_zero_checkpoint(folder, trained=False)
    assert list(read['ema_state_dict']) == ['steps']  # (the trained weights: left out)
    assert int(read['ema_state_dict']['steps']) == 3
    assert all(torch.equal(v, obj['state_dict'][k]) for k, v in read['state_dict'].items())


def test_infer_reads_the_client_state_once(zero_folder, reads, capsys):
    work, folder, _ = zero_folder
    model, _ = init_model(str(work), checkpoint=folder)
    assert model.loaded_weights == 'EMA weights'
    assert SAID in capsys.readouterr().err  # (the count was read)
    assert len(reads) == 1


def test_export_reads_the_client_state_once(zero_folder, reads, capsys):
    from tools.export_denoiser import read_denoiser
    _, folder, _ = zero_folder
    _, which, *_ = read_denoiser(folder)
    assert which == 'EMA weights'
    assert SAID in capsys.readouterr().err
    assert len(reads) == 1
