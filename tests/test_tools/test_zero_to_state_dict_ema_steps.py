"""tools/zero_to_state_dict.py keeps the EMA's count of updates (``steps``, which the
ZeRO folder's client state records) in the file's ``ema_state_dict``, as mmengine's
EMAHook saves it. It was left out: tools/infer.py and tools/export_denoiser.py said of
a short ZeRO run's young EMA weights that they are mostly initial when given the
folder, not when given the converted file; and ``--load-from`` the file restarted the
average (a count of 0 copies the model at the first update) where the folder's count
goes on averaging."""
import types

import pytest
import torch

pytest.importorskip('deepspeed')

from mmsora.utils.checkpoint import load_checkpoint_file  # noqa: E402
from tests.test_engine.test_deepspeed_train import train  # noqa: E402
from tools import zero_to_state_dict  # noqa: E402


def warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith('warning: ')]


@pytest.fixture(scope='module')
def zero_run(tmp_path_factory):
    """The demo DiT (1 block) trained 3 steps under ZeRO-2, its EMA of momentum 0.01:
    (work dir, its last folder, that folder converted by tools/zero_to_state_dict.py)."""
    work = tmp_path_factory.mktemp('zero_run') / 'run'
    client = train(work)
    assert int(client['ema_state_dict']['steps']) == 3  # what the folder records
    folder = work / 'iter_3.pth'
    out = work.parent / 'converted.pth'
    zero_to_state_dict.main([str(folder), '--out', str(out)])
    return work, str(folder), str(out)


def test_the_converted_file_keeps_the_ema_updates(zero_run):
    _, _, out = zero_run
    ckpt = load_checkpoint_file(out)  # weights-only, as the tools read it
    assert int(ckpt['ema_state_dict']['steps']) == 3


def test_infer_and_export_warn_of_the_file_as_of_the_folder(zero_run, tmp_path, capsys):
    """3 updates: 0.99 ** 2 = 98% of the initial weights left."""
    from tools.export_denoiser import main as export
    from tools.infer import main as infer
    work, folder, out = zero_run
    capsys.readouterr()
    said = {}
    for name, path in (('folder', folder), ('file', out)):
        infer([str(work), '--checkpoint', path, '--num-samples', '1', '--steps', '2',
               '--out', str(tmp_path / f'{name}.png')])
        export([path, '--out', str(tmp_path / f'{name}.pt')])
        said[name] = [line.replace(path, 'CKPT') for line in warnings(capsys)]
    line = ('warning: the EMA weights of CKPT still hold 98% of their initial weights '
            'after 3 updates (momentum 0.01): --no-ema {} the trained weights; or train '
            'longer')
    assert said['folder'] == [line.format('samples'), line.format('exports')]
    assert said['file'] == said['folder']


def test_load_from_the_file_goes_on_averaging(zero_run):
    """EMAHook's --load-from (mmsora/engine/ema.py): the average is the file's EMA
    weights with its count, so the next update moves it by the momentum rather than
    copying the model."""
    from mmengine.config import Config

    from mmsora.engine.ema import EMAHook
    from mmsora.registry import MODELS
    from tests.test_engine.test_deepspeed_train import DEMO
    _, _, out = zero_run
    cfg = Config.fromfile(DEMO)
    cfg.model.denoiser.depth = 1
    model = MODELS.build(cfg.model)
    hook = EMAHook(momentum=0.01, update_buffers=True)
    hook.before_run(types.SimpleNamespace(model=model))
    ckpt = load_checkpoint_file(out)
    ema = dict(ckpt['state_dict'])
    hook.after_load_checkpoint(types.SimpleNamespace(_resume=False), ckpt)
    assert int(hook.ema_model.steps) == 3
    key = 'denoiser.final_layer.linear.weight'
    assert torch.equal(hook.ema_model.module.state_dict()[key], ema[key])
