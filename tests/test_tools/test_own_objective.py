"""An objective of one's own (a DIFFUSION entry with loss() and sample() alone, as
LatentDiffusion's docstring and README "Your own modules" say) through the sampling
tools: infer sampled and then stopped on the missing last_nfe before saving;
benchmark_sampling read its samplers()."""
import os.path as osp

import pytest
import torch

from mmsora.registry import DIFFUSION
from tools import benchmark_sampling, infer

CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
pytestmark = pytest.mark.usefixtures('malloc_calls')


@DIFFUSION.register_module(name='EulerFlowOfOnesOwn', force=True)
class EulerFlowOfOnesOwn:
    """x_t = (1 - t) x0 + t noise, the velocity predicted; Euler steps from noise."""

    def loss(self, model, x0, model_kwargs=None):
        t = torch.rand(len(x0))
        noise = torch.randn_like(x0)
        xt = (1 - t.view(-1, *[1] * (x0.dim() - 1))) * x0 + t.view(-1, 1, 1, 1) * noise
        out = model(xt, t * 999, **(model_kwargs or {}))
        return dict(loss=((out - (noise - x0)) ** 2).flatten(1).mean(1))

    def sample(self, model_fn, noise, model_kwargs, num_steps=4, **kwargs):
        x = noise
        for i in range(num_steps, 0, -1):
            t = torch.full((len(x),), i / num_steps)
            x = x - model_fn(x, t * 999, **model_kwargs) / num_steps
        return x


@pytest.fixture
def own_objective_run(repo_root, tmp_path):
    """A config with the objective of one's own, and random denoiser weights."""
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.training_inputs import training_model_cfg
    config = tmp_path / 'own.py'
    config.write_text(f"_base_ = [{osp.join(repo_root, CONFIG)!r}]\n"
                      "model = dict(diffusion=dict(_delete_=True, type='EulerFlowOfOnesOwn'),"
                      " denoiser=dict(learn_sigma=False))\n"
                      "sample_cfg = dict(_delete_=True, num_steps=3, cfg_scale=2.0)\n")
    model = MODELS.build(training_model_cfg(load_config(str(config))))
    weights = tmp_path / 'own.pt'
    torch.save(model.denoiser.state_dict(), weights)
    return str(config), str(weights)


def test_infer_and_benchmark_sample_an_objective_of_ones_own(own_objective_run, tmp_path,
                                                             capsys):
    config, weights = own_objective_run
    infer.main([config, '--checkpoint', weights, '--labels', '0', '1', '--device', 'cpu',
                '--out', str(tmp_path / 'own.png')])
    assert osp.isfile(tmp_path / 'own.png')
    assert 'NFE not reported by the objective' in capsys.readouterr().out
    results = benchmark_sampling.main([config, '--batch-size', '2', '--repeats', '1',
                                       '--precision', 'fp32', '--threads', '1',
                                       '--device', 'cpu'])
    assert results[0]['nfe'] is None and results[0]['s_per_batch'] > 0
