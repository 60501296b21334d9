"""A float64 model sampled from float64 noise stays in float64 through the sampler
(a parity check against DiT's own loop at float64 was cut to float32 at every step)."""
import os.path as osp

import torch

from mmsora.apis import init_model
from tests.tiny_models import DEMO, TINY_DEMO_OPTIONS


def test_a_float64_model_samples_in_float64(repo_root):
    options = [o for o in TINY_DEMO_OPTIONS if o.startswith('model.')]
    model, _ = init_model(osp.join(repo_root, DEMO), checkpoint=False, cfg_options=options)
    torch.manual_seed(0)
    for p in model.denoiser.parameters():  # (DiT's zero-initialised output: all of
        p.data.normal_(0, 0.2)             # them random, the outputs not round numbers)
    model.double()
    seen = []
    forward = model.denoiser.forward_with_cfg

    def recorded(x, t, **kwargs):
        out = forward(x, t, **kwargs)
        seen.append(out.dtype)
        return out

    model.denoiser.forward_with_cfg = recorded
    labels = [1, 2]
    z = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = model.sample(labels, noise=z, sampler='ddim', num_steps=5, cfg_scale=4.0,
                        decode=False)
    assert ours.dtype == torch.float64 and seen == [torch.float64] * 5
    # the objective's loop on the denoiser itself, in float64: the same to float64 rounding
    y = torch.tensor(labels + [model.num_classes] * 2)
    direct = model.diffusion.respace('ddim5').ddim_sample_loop(
        forward, (4, 3, 8, 8), noise=torch.cat([z, z]),
        model_kwargs=dict(y=y, cfg_scale=4.0))[:2]
    torch.testing.assert_close(ours, direct, rtol=1e-12, atol=1e-12)
