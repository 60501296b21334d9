"""tools/infer.py with a Transport model: every flag shared with the Gaussian samplers,
--sampler-options checked by the objective (one-line errors), the NFE reported."""
import os.path as osp

import pytest
import torch
from PIL import Image

from mmsora.utils.cli import run_cli
from tests.sit_demo import DEMO, ROOT, TINY, load_infer

# ``checkpoint``: the tiny SiT demo's (tests/test_diffusion/conftest.py)


def infer(checkpoint, tmp_path, *args):
    out = tmp_path / 'grid.png'
    argv = [DEMO, '--checkpoint', checkpoint, '--num-samples', '4', '--out', str(out),
            '--cfg-options', *TINY, *args]
    code = run_cli(lambda: load_infer().main(argv))
    return code, out


@pytest.mark.parametrize('args, nfe', [
    ([], 50),  # the config's sample_cfg: ode_heun, 25 steps
    (['--sampler', 'sde_heun', '--steps', '4', '--cfg-scale', '1',
      '--sampler-options', 'diffusion_form=linear', 'last_step=Tweedie'], 7),
    (['--sampler', 'ode_dopri5', '--sampler-options', 'atol=1e-4', 'rtol=1e-3'], None),
    (['--sampler', 'FlowMatchEulerDiscreteScheduler', '--steps', '5',
      '--sampler-options', 'shift=3.0'], 5),
])
def test_infer_samples_with_transport_samplers(checkpoint, tmp_path, capsys, args, nfe):
    if 'ode_dopri5' in args:
        pytest.importorskip('torchdiffeq')
    code, out = infer(checkpoint, tmp_path, *args)
    assert code == 0, capsys.readouterr().err
    assert Image.open(out).size == (2 + 4 * 10, 2 + 10)  # 4 pictures of 8x8 in a row
    printed = capsys.readouterr().out
    assert 'model evaluations (NFE) per batch' in printed
    if nfe is not None:
        assert f'; {nfe} model evaluations' in printed, printed


@pytest.mark.parametrize('args, message', [
    (['--sampler', 'ddim'], "unknown sampler 'ddim' for Transport; choose one of"),
    (['--sampler', 'sde_euler', '--sampler-options', 'atol=1e-3'],
     "sampler 'sde_euler' takes no option atol"),
    (['--sampler', 'ode_euler', '--eta', '0.5'], "sampler 'ode_euler' takes no option eta"),
    (['--sampler-options', 'atol'], "malformed --sampler-options entry 'atol'"),
])
def test_bad_sampler_choices_give_one_line(checkpoint, tmp_path, capsys, args, message):
    code, _ = infer(checkpoint, tmp_path, *args)
    err = capsys.readouterr().err
    assert code == 2 and err.count('error:') == 1 and message in err, err


def test_a_checkpoint_of_another_objective_is_refused(checkpoint, tmp_path, capsys):
    """A SiT run's checkpoint sampled through the DiT (DDPM) config sampled without a
    word (meaningless pictures): the objective its meta records is compared first."""
    from mmengine.config import Config
    saved = tmp_path / 'iter_1.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    state['meta'] = dict(cfg=Config(dict(model=dict(
        diffusion=dict(type='Transport')))).pretty_text)
    torch.save(state, saved)
    dit = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    argv = [dit, '--checkpoint', str(saved), '--num-samples', '4', '--out',
            str(tmp_path / 'g.png'), '--cfg-options', *TINY]
    code = run_cli(lambda: load_infer().main(argv))
    err = capsys.readouterr().err
    assert code == 2 and (f'error: --checkpoint {saved}: trained with the Transport '
                          'objective, the config samples with GaussianDiffusion') in err, err
    argv[0] = DEMO  # its own objective: sampled
    assert run_cli(lambda: load_infer().main(argv)) == 0, capsys.readouterr().err
