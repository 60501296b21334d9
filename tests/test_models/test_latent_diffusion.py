"""LatentDiffusion: the training loss, checks on its inputs, sampling with every
sampler family, seeds per sample, CFG, and on-the-fly VAE encoding."""
import pytest
import torch

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.registry import MODELS
from tests.tiny_models import TINY_VAE

TINY_DIT = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                depth=2, num_heads=2, num_classes=3, learn_sigma=True)


def build(**kwargs):
    torch.manual_seed(0)
    cfg = dict(type='LatentDiffusion', denoiser=TINY_DIT, latent_shape=(4, 8, 8),
               num_classes=3, **kwargs)
    model = MODELS.build(cfg)
    with torch.no_grad():  # leave adaLN-Zero's zero start, so outputs depend on x
        for p in model.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_loss_terms_and_backward():
    model = build()
    losses = model(latents=torch.randn(4, 4, 8, 8), labels=torch.tensor([0, 1, 2, 0]))
    assert set(losses) == {'loss', 'mse', 'vb'}
    assert not losses['mse'].requires_grad and losses['loss'].requires_grad
    losses['loss'].backward()
    assert model.denoiser.x_embedder.proj.weight.grad.abs().sum() > 0


def test_a_part_that_is_not_a_config_is_named():
    """model.denoiser=None (--cfg-options) was mmengine's TypeError traceback."""
    with pytest.raises(ValueError, match=r'^model.denoiser must be a config '
                                         r'dict\(type=...\), got None$'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=None, latent_shape=(4, 8, 8)))
    with pytest.raises(ValueError, match=r"^model.diffusion must be .*, got 'ddpm'$"):
        MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_DIT, diffusion='ddpm',
                          latent_shape=(4, 8, 8), num_classes=3))


def test_settings_stated_twice_must_agree():
    """model.num_classes against the denoiser's (an IndexError at sampling, even for
    label 0), and learn_sigma of the denoiser against the objective's (an
    AssertionError in the loss)."""
    with pytest.raises(ValueError, match=r'model.num_classes=1000 but model.denoiser.'
                                         r'num_classes=3: set both'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_DIT, latent_shape=(4, 8, 8),
                          num_classes=1000))
    # a denoiser of one's own with a num_classes of its own (no DiT y_embedder): it
    # trained, class 3 aliasing its null row, and guided sampling hit an IndexError
    @MODELS.register_module(name='OwnClassDenoiser31', force=True)
    class OwnClassDenoiser31(torch.nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.num_classes = num_classes
    with pytest.raises(ValueError, match=r'model.num_classes=4 but model.denoiser.'
                                         r'num_classes=3: set both'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=dict(type='OwnClassDenoiser31'),
                          latent_shape=(4, 8, 8), num_classes=4))
    with pytest.raises(ValueError, match=r'model.denoiser.learn_sigma=False but '
                                         r'model.diffusion.learn_sigma=True: set both alike'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=dict(TINY_DIT, learn_sigma=False),
                          latent_shape=(4, 8, 8), num_classes=3))
    with pytest.raises(ValueError, match=r'model.latent_shape \[3, 8, 8\] has 3 channels but '
                                         r'model.denoiser.in_channels is 4'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_DIT, latent_shape=(3, 8, 8),
                          num_classes=3))
    # the token grid and the frames: an assertion in the first forward before
    with pytest.raises(ValueError, match=r'model.latent_shape \[4, 16, 16\] is 16x16 but '
                                         r'model.denoiser.input_size is 8x8'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_DIT, latent_shape=(4, 16, 16),
                          num_classes=3))
    video = dict(type='VideoDiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                 depth=2, num_heads=2, num_frames=2, num_classes=3)
    with pytest.raises(ValueError, match=r'model.latent_shape \[4, 4, 8, 8\] has 4 frames but '
                                         r'model.denoiser.num_frames is 2'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=video, latent_shape=(4, 4, 8, 8),
                          num_classes=3))
    MODELS.build(dict(type='LatentDiffusion', denoiser=video, latent_shape=(4, 1, 8, 8),
                      num_classes=3))  # fewer frames than the table holds: taken
    with pytest.raises(ValueError, match='hidden_size 32 must be divisible by num_heads 3'):
        MODELS.build(dict(type='LatentDiffusion', denoiser=dict(TINY_DIT, num_heads=3),
                          latent_shape=(4, 8, 8), num_classes=3))
    # the flow objective takes the first half of a learn_sigma output, as SiT does
    MODELS.build(dict(type='LatentDiffusion', denoiser=TINY_DIT, latent_shape=(4, 8, 8),
                      num_classes=3, diffusion=dict(type='Transport')))


def test_bad_batches_name_the_problem():
    model = build()
    with pytest.raises(ValueError, match=r'\(4, 16, 16\) do not fit.*latent_shape=\(4, 8, 8\)'):
        model.loss(torch.randn(2, 4, 16, 16), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r'labels must lie in \[0, 3\).*max 3'):
        model.loss(torch.randn(2, 4, 8, 8), torch.tensor([0, 3]))
    # Without a VAE, images are the latents (pixel space): their shape is checked too.
    with pytest.raises(ValueError, match='do not fit'):
        model.loss(images=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1]))
    assert torch.isfinite(model.loss(images=torch.randn(2, 4, 8, 8),
                                     labels=torch.tensor([0, 1]))['loss'])
    with pytest.raises(ValueError, match="unknown sampler 'Nope'"):
        model.sample([0], sampler='Nope', num_steps=2, seeds=[0])
    with pytest.raises(ValueError, match='2 seeds for 1 samples'):
        model.sample([0], seeds=[0, 1], num_steps=2)


@pytest.mark.parametrize('sampler, steps', [
    ('ddpm', 10), ('ddim', 5), ('DPMSolverMultistepScheduler', 5),
    ('EulerAncestralDiscreteScheduler', 5), ('UniPCMultistepScheduler', 5)])
@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_a_sample_depends_on_its_seed_only(sampler, steps, cfg_scale):
    model = build().eval()
    kw = dict(sampler=sampler, num_steps=steps, cfg_scale=cfg_scale)
    both = model.sample([0, 2], seeds=[11, 12], **kw)
    alone = model.sample([2], seeds=[12], **kw)
    assert both.shape == (2, 4, 8, 8) and torch.isfinite(both).all()
    # Equal up to the rounding of a batch of 2 against 1 in the GEMMs (which differs
    # by CPU: 1.7e-5 after 10 guided DDPM steps on an AMD EPYC), far below another seed's.
    torch.testing.assert_close(both[1:], alone, atol=1e-4, rtol=1e-4)
    other = model.sample([2], seeds=[13], **kw)
    assert not torch.allclose(alone, other)


def test_predict_with_sample_kwargs_is_sample():
    """forward(mode='predict', sample_kwargs=...) is how an FSDP root samples
    (ShardedSampler): exactly ``sample(**sample_kwargs)``."""
    model = build().eval()
    kw = dict(labels=[0, 2], seeds=[11, 12], sampler='ddim', num_steps=3, cfg_scale=2.0)
    with torch.no_grad():
        assert torch.equal(model(mode='predict', sample_kwargs=kw), model.sample(**kw))
        with pytest.raises(ValueError, match='labels in sample_kwargs'):
            model(labels=torch.tensor([0]), mode='predict', sample_kwargs=kw)


@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_half_precision_weights_sample_in_float32(cfg_scale):
    """DeepSpeed's bf16 turns the module's weights to bf16; the sampling hooks sample
    that module during training (it failed: "Input type (float) and bias type
    (c10::BFloat16) should be the same"). The denoiser gets bf16 inputs, the sampler
    keeps float32: the sample is float32 and near the float32 model's."""
    model = build().eval()
    kw = dict(sampler='ddim', num_steps=4, cfg_scale=cfg_scale, seeds=[5, 6])
    full = model.sample([0, 1], **kw)
    model.denoiser.to(torch.bfloat16)
    half = model.sample([0, 1], **kw)
    assert half.dtype == torch.float32
    assert 0 < (half - full).abs().max() < 0.1 * full.abs().max()


@pytest.mark.parametrize('precision,dtype', [('bf16', torch.bfloat16),
                                             ('fp16', torch.float16)])
@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_sampling_precision_runs_the_denoiser_under_autocast(precision, dtype, cfg_scale):
    """precision='bf16' / 'fp16' (tools/infer.py --precision, sample_cfg.precision):
    the denoiser's products in that dtype, the sampler's state float32, the sample
    near the float32 one; 'tf32' is float32 on the CPU and leaves the process's
    matmul setting as it was; an unknown precision is one line."""
    model = build().eval()
    seen = []
    model.denoiser.final_layer.linear.register_forward_hook(
        lambda module, args, out: seen.append(out.dtype))
    kw = dict(sampler='ddim', num_steps=4, cfg_scale=cfg_scale, seeds=[5, 6])
    full = model.sample([0, 1], **kw)
    assert set(seen) == {torch.float32}
    seen.clear()
    half = model.sample([0, 1], precision=precision, **kw)
    assert set(seen) == {dtype} and half.dtype == torch.float32
    assert 0 < (half - full).abs().max() < 0.1 * full.abs().max()
    assert torch.equal(model.sample([0, 1], precision='tf32', **kw), full)
    assert torch.equal(model.sample([0, 1], precision='fp32', **kw), full)
    # 'fp32' is float32 inside an autocast region the caller opened, too
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(model.sample([0, 1], precision='fp32', **kw), full)
    with pytest.raises(ValueError, match=r"^precision='bf32': sampling precisions are "
                                         r'fp32, tf32, bf16, fp16$'):
        model.sample([0, 1], precision='bf32', **kw)


def test_float32_products_on_a_gpu_are_set_for_the_sampling_alone():
    """'tf32' turns TF32 on for the sampling, 'fp32' / 'bf16' / 'fp16' turn it off (the
    training's TF32 reached an 'fp32' sampling hook's samples), None leaves it; the
    settings are put back, through the per-backend API (the legacy getter refuses to
    read after it was used); nothing on the CPU."""
    from mmsora.models.latent_diffusion import _float32_products
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    cuda = torch.device('cuda')
    for precision, inside in (('tf32', 'tf32'), ('fp32', 'ieee'), ('bf16', 'ieee')):
        with _float32_products(precision, cuda):
            assert (matmul.fp32_precision, conv.fp32_precision) == (inside, inside)
        assert (matmul.fp32_precision, conv.fp32_precision) == before
    for precision, device in ((None, cuda), ('tf32', torch.device('cpu'))):
        with _float32_products(precision, device):
            assert (matmul.fp32_precision, conv.fp32_precision) == before


def test_half_weights_sample_in_their_own_dtype_at_any_precision():
    """DeepSpeed bf16 weights sampled by a hook with sample_cfg.precision='fp16' (or
    fp16 weights at 'bf16') failed in autocast ('Unexpected floating ScalarType')."""
    model = build().eval()
    kw = dict(sampler='ddim', num_steps=2, cfg_scale=3.0, seeds=[5, 6])
    for weights, precision in ((torch.bfloat16, 'fp16'), (torch.float16, 'bf16')):
        model.denoiser.to(weights)
        assert torch.equal(model.sample([0, 1], precision=precision, **kw),
                           model.sample([0, 1], **kw))


def test_the_tools_default_precision():
    """infer and the text-to-video pictures: sample_cfg.precision, else TF32 on a GPU (as
    DiT's sample.py), None (float32 as it is) on the CPU."""
    from mmsora.apis.inference import default_precision
    assert default_precision('cuda') == default_precision('cuda:1') == 'tf32'
    assert default_precision('cpu') is None
    assert default_precision('cuda', dict(precision='bf16', fps=8)) == 'bf16'
    assert default_precision('cpu', dict(sampler='ddim')) is None


def test_cfg_changes_the_sample_and_scale_one_is_unguided():
    model = build().eval()
    plain = model.sample([1], seeds=[3], sampler='ddim', num_steps=4)
    guided = model.sample([1], seeds=[3], sampler='ddim', num_steps=4, cfg_scale=4.0)
    assert not torch.allclose(plain, guided)
    # Scale 1 is the default: the plain, conditional sample (no unconditional half).
    calls = []
    model.denoiser.x_embedder.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    one = model.sample([1], seeds=[3], sampler='ddim', num_steps=4, cfg_scale=1.0)
    assert torch.equal(one, plain) and calls == [1] * 4
    model.sample([1], seeds=[3], sampler='ddim', num_steps=4, cfg_scale=4.0)
    assert calls[4:] == [2] * 4  # guided: conditional and unconditional halves
    # a denoiser of one's own without forward_with_cfg: one line, not an AttributeError
    model.denoiser.__class__ = type('OwnDenoiser', (torch.nn.Module,), dict(
        forward=type(model.denoiser).forward))  # DiT's forward, no forward_with_cfg
    with pytest.raises(ValueError, match=r'OwnDenoiser has no forward_with_cfg: it cannot '
                                         r'sample with guidance \(cfg_scale=4.0\); sample '
                                         r'with cfg_scale 1 \(tools/infer.py --cfg-scale 1; '
                                         r'in a config sample_cfg.cfg_scale=1'):
        model.sample([1], seeds=[3], sampler='ddim', num_steps=4, cfg_scale=4.0)


def test_vae_encodes_on_the_fly_and_decodes_samples():
    model = build(vae=dict(type='AutoencoderKLWrapper', config=TINY_VAE, scale_factor=0.5))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.isfinite(model.loss(images=images, labels=torch.tensor([0, 1]))['loss'])
    pics = model.sample([0, 1], seeds=[0, 1], sampler='ddim', num_steps=2)
    assert pics.shape == (2, 3, 16, 16) and pics.min() >= -1 and pics.max() <= 1
    # The frozen VAE is not part of what is trained or saved.
    assert not any(k.startswith('vae.') for k in model.state_dict())


def test_diffusers_samplers_use_the_objectives_schedule():
    # A model trained with the cosine schedule must be sampled with it, not with the
    # linear betas diffusers would default to.
    model = build(diffusion=dict(type='GaussianDiffusion', beta_schedule='squaredcos_cap_v2'))
    from mmsora.diffusion import build_noise_scheduler
    sched = build_noise_scheduler('DPMSolverMultistepScheduler',
                                  **model.diffusion.scheduler_overrides('DPMSolverMultistepScheduler'))
    torch.testing.assert_close(sched.alphas_cumprod.double(),
                               torch.from_numpy(model.diffusion.alphas_cumprod),
                               rtol=1e-5, atol=1e-6)


def test_init_seed_fixes_the_initial_weights_and_the_generators_afterwards(monkeypatch):
    cfg = dict(type='LatentDiffusion', denoiser=TINY_DIT, latent_shape=(4, 8, 8),
               num_classes=3, init_seed=5)
    monkeypatch.setattr(torch.cuda, 'manual_seed_all', lambda seed: pytest.fail(
        'init_seed must leave the CUDA generators (diff_rank_seed streams) alone'))
    seed = torch.default_generator.manual_seed  # the CPU one, as mmengine's seeding
    seed(0)
    torch.rand(7)  # the global stream elsewhere (a process of its own seed)
    first = MODELS.build(cfg).state_dict()
    after = torch.rand(3)
    seed(0)
    torch.rand(7)
    assert torch.equal(torch.rand(3), after)  # given back: as if nothing was built
    # At the start of the same seed's stream (the Runner seeds, then builds): the
    # same weights and the same stream afterwards as without init_seed.
    seed(5)
    second = MODELS.build(cfg).state_dict()
    after = torch.rand(3)
    seed(5)
    plain = MODELS.build({**cfg, 'init_seed': None}).state_dict()
    assert torch.equal(torch.rand(3), after)
    for name in first:
        assert torch.equal(first[name], second[name]) and torch.equal(first[name],
                                                                      plain[name])
    other = MODELS.build({**cfg, 'init_seed': 6}).state_dict()
    assert not torch.equal(other['denoiser.x_embedder.proj.weight'],
                           first['denoiser.x_embedder.proj.weight'])
    with pytest.raises(ValueError, match='model.init_seed must be an int'):
        MODELS.build({**cfg, 'init_seed': 1.5})
