"""tools/export_denoiser.py says, as tools/infer.py does, where the EMA weights it
writes (its default) are by the run's record still mostly their initial ones (a short
run's: noise), naming its --no-ema; it wrote them without a word. Where the checkpoint
does not tell, or a fine-tune's young EMA samples well, it says nothing, as infer."""
import torch

from tests.test_apis.test_short_run_ema_warning import (  # noqa: F401
    saved, short_run, untold_checkpoints)
from tools import export_denoiser


def warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith('warning: ')]


def test_a_short_runs_ema_export_is_warned_about(short_run, tmp_path, capsys):  # noqa: F811
    """3 updates of momentum 0.01: 0.99 ** 2 = 98% of the initial weights left."""
    work, path, _ = short_run
    export_denoiser.main([str(work), '--out', str(tmp_path / 'ema.pt')])
    assert warnings(capsys) == [
        f'warning: the EMA weights of {path} still hold 98% of their initial weights '
        'after 3 updates (momentum 0.01): --no-ema exports the trained weights; or '
        'train longer']
    export_denoiser.main([str(work), '--out', str(tmp_path / 'trained.pt'), '--no-ema'])
    assert warnings(capsys) == []


def test_no_warning_where_infer_gives_none(short_run, tmp_path, capsys):  # noqa: F811
    """The files that tools/infer.py does not warn about (young_ema: not told, or
    not started from random weights) are exported without a word too."""
    work, _, obj = short_run
    denoiser = {k[len('denoiser.'):]: v for k, v in obj['state_dict'].items()
                if k.startswith('denoiser.')}
    cfg = obj['meta']['cfg']
    later = (  # runs from trained weights, an EMA begun late
        "load_from = 'DiT-XL-2-256x256.pt'",
        "model = dict(pretrained_denoiser='DiT-XL-2-256x256.pt')",
        "custom_hooks = [dict(type='EMAHook', momentum=0.01, begin_iter=2)]")
    untold = {**untold_checkpoints(obj),
              **{f'later_{n}.pth': dict(obj, meta=dict(obj['meta'], cfg=f'{cfg}\n{more}\n'))
                 for n, more in enumerate(later)}}
    for name, content in untold.items():
        export_denoiser.main([saved(content, tmp_path / name),
                              '--out', str(tmp_path / f'{name}.out.pt')])
        assert warnings(capsys) == [], name
    # the run's own file as it is warns: each case above took away what it is told by
    export_denoiser.main([saved(obj, tmp_path / 'iter_3.pth'),
                          '--out', str(tmp_path / 'out.pt')])
    assert len(warnings(capsys)) == 1
    assert torch.load(tmp_path / 'out.pt', weights_only=True).keys() == denoiser.keys()
