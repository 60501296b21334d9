"""StableCascadeVideo (Stage C + temporal layers) and WuerstchenDiffusion.

References are diffusers' own: the image ``StableCascadeUNet``, ``DDPMWuerstchenScheduler``
and ``StableCascadePriorPipeline``.
"""
import json

import pytest
import torch
from diffusers import DDPMWuerstchenScheduler, StableCascadePriorPipeline
from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet

from mmsora.diffusion import WuerstchenDiffusion
from mmsora.models import StableCascadeVideo
from mmsora.registry import DIFFUSION, MODELS
from tests.tiny_models import TINY_STAGE_C


def perturb(module, std=0.05, seed=0):
    """Move every weight off its init (diffusers zero-inits some), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return module


def make_video_model(**kwargs):
    torch.manual_seed(0)
    model = StableCascadeVideo(TINY_STAGE_C, **kwargs)
    perturb(model.unet)
    return model.eval()


def inputs(n=2, frames=3, size=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, frames, size, size, generator=g), torch.rand(n, generator=g),
            torch.randn(n, 5, 24, generator=g), torch.randn(n, 20, generator=g))


def image_unet(unet, x, t, y, pooled):
    """diffusers' image UNet on the frames of (N, C, T, H, W) clips, as one batch."""
    n, c, f, h, w = x.shape
    out = unet(x.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w), t.repeat_interleave(f),
               clip_text_pooled=pooled.repeat_interleave(f, 0)[:, None],
               clip_text=y.repeat_interleave(f, 0),
               clip_img=torch.zeros(n * f, 1, unet.config.clip_image_in_channels)).sample
    return out.view(n, f, c, h, w).permute(0, 2, 1, 3, 4)


# --------------------------------------------------------------------------- #
#                                 Denoiser                                     #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('layers', [('attn',), ('attn', 'conv'), ('conv',)])
def test_untrained_video_model_is_the_image_unet_frame_by_frame(layers):
    model = make_video_model(temporal_layers=layers)
    x, t, y, pooled = inputs()
    with torch.no_grad():
        out = model(x, t, y, pooled=pooled)
        ref = image_unet(model.unet, x, t, y, pooled)
        # One frame at a time (batch N instead of N*T: same maths, other BLAS blocking).
        per_frame = torch.stack([image_unet(model.unet, x[:, :, i:i + 1], t, y, pooled)[:, :, 0]
                                 for i in range(x.shape[2])], dim=2)
    assert torch.equal(out, ref)  # bit for bit
    torch.testing.assert_close(out, per_frame, rtol=0, atol=1e-5)
    assert out.abs().mean() > 0.1  # not a trivially zero output


def test_temporal_layers_see_other_frames_once_trained():
    model = make_video_model(temporal_layers=('attn', 'conv'))
    x, t, y, pooled = inputs()
    x2 = x.clone()
    x2[:, :, 2] += 1.0  # change the last frame only
    with torch.no_grad():
        untouched = (model(x, t, y, pooled=pooled) - model(x2, t, y, pooled=pooled))[:, :, 0]
        perturb(model.temporal_down, seed=3)
        perturb(model.temporal_up, seed=4)
        mixed = (model(x, t, y, pooled=pooled) - model(x2, t, y, pooled=pooled))[:, :, 0]
    assert untouched.abs().max() == 0  # frame-wise at init: frame 0 ignores frame 2
    assert mixed.abs().max() > 1e-3


def test_layout_and_freezing():
    model = StableCascadeVideo(TINY_STAGE_C, temporal_every=2, freeze_spatial=True)
    # one temporal block per second Stage C layer: levels of 1 and 2 layers
    kinds = [[type(m).__name__ for m in level] for level in model.temporal_down]
    assert kinds == [['Identity'], ['Identity', 'TemporalBlock']]
    assert all(not p.requires_grad for p in model.unet.parameters())
    assert all(p.requires_grad for p in model.temporal_up.parameters())
    model.train()
    assert model.training and not model.unet.training  # frozen part: no dropout
    assert model.condition == 'text'
    with pytest.raises(ValueError, match='clip_text_in_channels and clip_image_in_channels'):
        StableCascadeVideo(dict(TINY_STAGE_C, clip_image_in_channels=None))
    with pytest.raises(ValueError, match="'attn' / 'conv'"):
        StableCascadeVideo(TINY_STAGE_C, temporal_layers=('lstm',))


def test_condition_checks_and_null_condition():
    model = make_video_model()
    x, t, y, pooled = inputs()
    with pytest.raises(ValueError, match=r'text tokens must be \(2, L, 24\)'):
        model(x, t, y[..., :3], pooled=pooled)
    with pytest.raises(ValueError, match='or neither'):
        model(x, t, y)
    with pytest.raises(ValueError, match=r'\(N, C, T, H, W\)'):
        model(x[:, :, 0], t, y, pooled=pooled)
    with torch.no_grad():  # no condition = zeroed tokens and pooled embedding
        uncond = model(x, t)
        zeros = model(x, t, torch.zeros(2, 1, 24), pooled=torch.zeros(2, 20))
        pooled_3d = model(x, t, y, pooled=pooled[:, None])
        assert torch.equal(pooled_3d, model(x, t, y, pooled=pooled))
    assert torch.equal(uncond, zeros)


def test_forward_with_cfg_guides_against_the_null_condition():
    model = make_video_model()
    x, t, y, pooled = inputs()
    with torch.no_grad():
        cond = model(x, t, y, pooled=pooled)
        uncond = model(x, t, torch.zeros_like(y), pooled=torch.zeros_like(pooled))
        out = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), y, 3.0,
                                     pooled=pooled)
    guided = uncond + 3.0 * (cond - uncond)
    torch.testing.assert_close(out[:2], guided, rtol=1e-5, atol=1e-5)
    assert torch.equal(out[:2], out[2:])


def test_condition_dropout_in_training_only():
    model = make_video_model(cond_dropout_prob=1.0)
    x, t, y, pooled = inputs()
    with torch.no_grad():
        model.train()
        dropped = model(x, t, y, pooled=pooled)
        model.eval()
        # dropped captions are zeroed at their own length, as CFG's null half
        null = model(x, t, torch.zeros_like(y), pooled=torch.zeros_like(pooled))
        assert torch.equal(dropped, null)
        assert not torch.equal(dropped, model(x, t, y, pooled=pooled))


def test_grad_checkpointing_gives_the_same_gradients(monkeypatch):
    from mmsora.models.layers import checkpointing
    grads, real = [], checkpointing.checkpoint
    for ckpt in (False, True, 'selective'):
        model = make_video_model(temporal_layers=('attn', 'conv'), grad_checkpointing=ckpt)
        perturb(model.temporal_down, seed=3)
        x, t, y, pooled = inputs()
        calls, runs = [], []  # checkpointed calls (their context_fn); block runs
        monkeypatch.setattr(checkpointing, 'checkpoint', lambda fn, *a, **kw: (
            calls.append(kw.get('context_fn')) or real(fn, *a, **kw)))
        for block in (*model.unet.down_blocks, *model.unet.up_blocks,
                      *model.temporal_down, *model.temporal_up):
            for layer in block:
                if not isinstance(layer, torch.nn.Identity):
                    layer.register_forward_pre_hook(lambda *_: runs.append(1))
        loss = model(x, t, y, pooled=pooled).square().mean()
        # every run of a block (spatial or temporal) checkpointed, as asked
        assert len(calls) == (len(runs) if ckpt else 0) and len(runs) > 10, ckpt
        assert set(calls) <= {checkpointing._SELECTIVE if ckpt == 'selective' else None}
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="grad_checkpointing must be True/False or 'sel"):
        make_video_model(grad_checkpointing=2)  # no 'every 2nd block' here
    assert make_video_model(grad_checkpointing=1).grad_checkpointing == 1  # the tools' K


def test_load_released_stage_c_folder(tmp_path):
    torch.manual_seed(5)
    released = perturb(StableCascadeUNet(**TINY_STAGE_C), seed=7)
    released.save_pretrained(tmp_path / 'prior_lite')
    model = MODELS.build(dict(type='StableCascadeVideo', unet=TINY_STAGE_C, freeze_spatial=True,
                              pretrained_path=str(tmp_path),
                              pretrained_subfolder='prior_lite'))
    temporal = {k: v.clone() for k, v in model.temporal_down.state_dict().items()}
    model.init_weights()
    for key, value in released.state_dict().items():
        assert torch.equal(model.unet.state_dict()[key], value), key
    assert all(torch.equal(v, model.temporal_down.state_dict()[k]) for k, v in temporal.items())
    assert all(not p.requires_grad for p in model.unet.parameters())

    with pytest.raises(FileNotFoundError, match="pretrained_subfolder='prior_lite'"):
        model.load_stage_c(str(tmp_path))
    config = json.loads((tmp_path / 'prior_lite' / 'config.json').read_text())
    config['block_out_channels'] = [64, 64]
    (tmp_path / 'prior_lite' / 'config.json').write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r'block_out_channels=\[64, 64\]'):
        model.load_stage_c(str(tmp_path), 'prior_lite')


def test_a_stage_b_given_for_the_prior_is_named(tmp_path):
    """A decoder folder given as the prior: a line of every architecture key that
    differed. The load of a prior is logged (it was silent)."""
    from unittest import mock

    from mmsora.utils.tiny_checkpoints import make_tiny_stable_cascade_decoder
    make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    model = MODELS.build(dict(type='StableCascadeVideo', unet=TINY_STAGE_C))
    with pytest.raises(ValueError, match=r'^\S+decoder_lite holds a Stage B \(the decoder: '
                                         r'it reads EfficientNet latents\), not a Stage C '
                                         r'prior: point pretrained_path'):
        model.load_stage_c(str(tmp_path / 'sc'), 'decoder_lite')
    StableCascadeUNet(**TINY_STAGE_C).save_pretrained(tmp_path / 'prior_lite')
    with mock.patch('mmengine.logging.print_log') as logged:
        model.load_stage_c(str(tmp_path), 'prior_lite')
    assert logged.call_args[0][0].startswith(f'Stage C weights from {tmp_path}/prior_lite: ')


# --------------------------------------------------------------------------- #
#                                 Objective                                    #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('scaler', [1.0, 1.5, 0.7])
def test_schedule_matches_diffusers(scaler):
    diffusion = WuerstchenDiffusion(scaler=scaler)
    sched = DDPMWuerstchenScheduler(scaler=scaler)
    t = torch.cat([torch.linspace(0, 1, 11), torch.rand(20)])
    torch.testing.assert_close(diffusion.alpha_bar(t), sched._alpha_cumprod(t, 'cpu'))
    x0, noise = torch.randn(31, 4, 2, 3, 3), torch.randn(31, 4, 2, 3, 3)
    torch.testing.assert_close(diffusion.q_sample(x0, t, noise), sched.add_noise(x0, noise, t))


@pytest.mark.parametrize('weight', ['none', 'p2'])
def test_loss_is_the_weighted_epsilon_mse(weight):
    diffusion = DIFFUSION.build(dict(type='WuerstchenDiffusion', loss_weight=weight))
    x0 = torch.randn(3, 4, 2, 5, 5)
    seen = {}

    def model(x, t, y):
        seen.update(x=x, t=t, y=y)
        return torch.zeros_like(x)

    torch.manual_seed(0)
    out = diffusion.loss(model, x0, dict(y='caption'))
    torch.manual_seed(0)
    t, noise = torch.rand(3), torch.randn_like(x0)
    assert torch.equal(seen['t'], t) and seen['y'] == 'caption'
    ab = DDPMWuerstchenScheduler()._alpha_cumprod(t, 'cpu')
    torch.testing.assert_close(seen['x'], DDPMWuerstchenScheduler().add_noise(x0, noise, t))
    mse = noise.square().mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(out['mse'], mse)
    expected = mse if weight == 'none' else mse * (1 - ab)  # 1 / (1 + SNR) = 1 - alpha_bar
    torch.testing.assert_close(out['loss'], expected)


def test_sampler_checks():
    diffusion = WuerstchenDiffusion()
    with pytest.raises(ValueError, match=r"choose one of \['DDPMWuerstchenScheduler'\]"):
        diffusion.sample(lambda x, t: x, torch.randn(1, 4, 2, 2), {}, 'ddim', 4)
    with pytest.raises(ValueError, match='takes no option eta'):
        diffusion.sample(lambda x, t: x, torch.randn(1, 4, 2, 2), {}, eta=0.0)
    # each grid fault named for what it is ([1.0, 0.5] said 'at least two values')
    for grid, message in (([1.0, 0.5], r'the grid must end at 0 .*; e\.g\. \[1\.0, 0\.5, '
                                       r'0\.0\]$'),
                          ([0.0], 'give at least two values'),
                          ([0.5, 1.0, 0.0], 'the values must decrease to 0$'),
                          ([2.0, 1.0, 0.0], r'the values lie in \[0, 1\]')):
        with pytest.raises(ValueError, match=rf'^timesteps=\[.*\]: {message}'):
            diffusion.sample(lambda x, t: x, torch.randn(1, 4, 2, 2), {}, timesteps=grid)
    with pytest.raises(ValueError, match='must end at 0'):  # before any model call: infer
        # and train check sample_cfg through it
        diffusion.check_sample_options('DDPMWuerstchenScheduler', timesteps=[1.0, 0.5])
    with pytest.raises(ValueError, match="loss_weight must be 'none' or 'p2'"):
        WuerstchenDiffusion(loss_weight='snr')


def test_guided_sampling_equals_stable_cascade_prior_pipeline():
    """Video model with one frame + our sampler == diffusers' Stage C pipeline."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    model = make_video_model()
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=10, hidden_size=24, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, projection_dim=20))
    pipe = StableCascadePriorPipeline(tokenizer=None, text_encoder=text_encoder,
                                      prior=model.unet, scheduler=DDPMWuerstchenScheduler())
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    y, pooled, noise = torch.randn(1, 5, 24, generator=g), torch.randn(1, 20, generator=g), \
        torch.randn(1, 4, 6, 6, generator=g)
    ref = pipe(prompt_embeds=y, prompt_embeds_pooled=pooled[:, None],
               negative_prompt_embeds=torch.zeros_like(y),
               negative_prompt_embeds_pooled=torch.zeros(1, 1, 20), height=256, width=256,
               num_inference_steps=4, guidance_scale=3.0, latents=noise,
               generator=torch.Generator().manual_seed(11)).image_embeddings

    x = noise[:, :, None]  # (N, C, T=1, H, W)
    generators = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    out = WuerstchenDiffusion().sample(
        model.forward_with_cfg, torch.cat([x, x]), dict(y=y, pooled=pooled, cfg_scale=3.0),
        'DDPMWuerstchenScheduler', 4, generators=generators)
    torch.testing.assert_close(out[:1, :, 0], ref, rtol=1e-4, atol=1e-4)
    assert WuerstchenDiffusion().samplers() == ['DDPMWuerstchenScheduler']


def test_custom_timestep_grid():
    grid = [1.0, 0.8, 2 / 3, 0.3, 0.0]
    seen = []
    diffusion = WuerstchenDiffusion()
    diffusion.sample(lambda x, t: seen.append(float(t[0])) or torch.zeros_like(x),
                     torch.randn(2, 4, 1, 2, 2), {}, timesteps=grid)
    torch.testing.assert_close(seen, grid[:-1])
    assert diffusion.last_nfe == 4


# --------------------------------------------------------------------------- #
#                       Cost counting (docs/stable_cascade.md)                 #
# --------------------------------------------------------------------------- #
def test_saved_bytes_leave_out_weights_and_attention_probabilities():
    from unittest import mock

    import torch.nn.functional as F

    from tools.stable_cascade_cost import _SavedBytes
    with torch.device('meta'):
        lin = torch.nn.Linear(8, 8)
        x = torch.randn(3, 5, 8, requires_grad=True)
        saved = _SavedBytes(lin)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), \
                mock.patch.object(F, 'scaled_dot_product_attention',
                                  saved.sdpa(F.scaled_dot_product_attention)):
            q = lin(x).view(3, 1, 5, 8)
            F.scaled_dot_product_attention(q, q, q).sum().backward()
    # the Linear keeps its input (the weight is left out); attention keeps q, k, v
    # and its output (not the 5 x 5 probabilities): 5 tensors of 3 x 5 x 8 floats
    assert saved.bytes == 5 * 3 * 5 * 8 * 4


def test_counted_flops_of_a_tiny_model():
    from tools.stable_cascade_cost import count_step
    cfg = dict(type='StableCascadeVideo', unet=TINY_STAGE_C)
    cost = count_step(cfg, 'stage_c', pixels=6 * 43, frames=2)
    frozen = count_step(dict(cfg, freeze_spatial=True), 'stage_c', pixels=6 * 43, frames=2)
    assert cost['params_m'] == frozen['params_m'] > frozen['trainable_m']
    assert cost['fwd_tflops'] == frozen['fwd_tflops'] > 0
    # backward ~ 2x forward; without the spatial weights' gradients, less
    assert 2.5 < cost['step_tflops'] / cost['fwd_tflops'] < 4
    assert frozen['step_tflops'] < cost['step_tflops'] and frozen['saved_gb'] < cost['saved_gb']
