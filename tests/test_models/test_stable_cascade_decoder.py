"""StableCascadeDecoder: Stage B + Stage A decoding of Stage C latents, frame by frame.

The reference is diffusers' ``StableCascadeDecoderPipeline`` called on one frame.
"""
import pytest
import torch
from diffusers import DDPMWuerstchenScheduler, StableCascadeDecoderPipeline
from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

from mmsora.models import StableCascadeDecoder
from mmsora.registry import MODELS
from mmsora.utils.tiny_checkpoints import TINY_STAGE_A, TINY_STAGE_B

TINY_DECODER = dict(type='StableCascadeDecoder',
                    config=dict(decoder=TINY_STAGE_B, vqgan=TINY_STAGE_A),
                    latent_dim_scale=2.0, num_steps=3, micro_batch_size=2)


def make_decoder(**kwargs):
    torch.manual_seed(0)
    wrapper = MODELS.build(dict(TINY_DECODER, **kwargs))
    with torch.no_grad():  # random but not saturated: shrink Stage A's output
        wrapper.pipeline.vqgan.out_block[0].weight.mul_(0.05)
    return wrapper


def reference_frame(pipe, z, seed=0, pooled=None):
    """diffusers' pipeline on one Stage C latent (1, C, h, w), images in [-1, 1]."""
    pooled = torch.zeros(1, 1, 20) if pooled is None else pooled.view(1, 1, -1)
    out = pipe(image_embeddings=z, prompt_embeds=torch.zeros(1, 1, 1),
               prompt_embeds_pooled=pooled, num_inference_steps=3, guidance_scale=0.0,
               generator=torch.Generator().manual_seed(seed), output_type='pt').images
    return out * 2 - 1


def test_decode_is_the_pipeline_per_frame_with_shared_noise():
    wrapper = make_decoder()
    z = torch.randn(2, 4, 3, 4, 4)
    pooled = torch.randn(2, 20)
    out = wrapper.decode(z, pooled=pooled)
    assert out.shape == (2, 3, 3, 32, 32) and out.dtype == torch.float32
    assert -1 <= out.min() < out.max() <= 1
    for n in range(2):
        for f in range(3):
            ref = reference_frame(wrapper.pipeline, z[n:n + 1, :, f], pooled=pooled[n])
            torch.testing.assert_close(out[n:n + 1, :, f], ref, rtol=1e-4, atol=1e-4)
    # micro-batching does not change the result; frames share Stage B's noise
    whole = make_decoder(micro_batch_size=None).decode(z, pooled=pooled)
    torch.testing.assert_close(whole, out, rtol=1e-4, atol=1e-4)
    still = wrapper.decode(z[:1, :, :1].expand(1, 4, 3, 4, 4))
    torch.testing.assert_close(still[:, :, 0], still[:, :, 2], rtol=1e-5, atol=1e-5)
    assert wrapper.decode(z[:, :, 0]).shape == (2, 3, 32, 32)  # images too


def test_frozen_and_out_of_the_state_dict():
    wrapper = make_decoder()
    wrapper.decode(torch.randn(1, 4, 4, 4))
    assert len(wrapper.state_dict()) == 0 and not list(wrapper.parameters())
    assert not wrapper.train().training
    assert wrapper.latent_channels == 4 and wrapper.downsample_factor == 8.0
    assert wrapper.latent_size(32, 36) == (4, 5)
    # the released factors: 1024 px <-> 24 x 24 Stage C latents <-> 256 x 256 Stage B
    released = StableCascadeDecoder(config=dict(decoder=TINY_STAGE_B, vqgan=dict(
        TINY_STAGE_A, levels=2, up_down_scale_factor=2)))
    assert released.latent_size(1024, 768) == (24, 18)
    assert int(24 * released.latent_dim_scale) * 4 == 1024
    assert all(not p.requires_grad for p in wrapper.pipeline.decoder.parameters())
    with pytest.raises(ValueError, match=r'\(N, C, T, H, W\)'):
        wrapper.decode(torch.randn(4, 4, 4))


def test_loads_a_local_stable_cascade_folder(tmp_path):
    torch.manual_seed(1)
    StableCascadeUNet(**TINY_STAGE_B).save_pretrained(tmp_path / 'decoder_lite')
    PaellaVQModel(**TINY_STAGE_A).save_pretrained(tmp_path / 'vqgan')
    DDPMWuerstchenScheduler().save_pretrained(tmp_path / 'scheduler')
    wrapper = MODELS.build(dict(type='StableCascadeDecoder', pretrained_path=str(tmp_path),
                                latent_dim_scale=2.0, num_steps=3))
    pipe = StableCascadeDecoderPipeline(
        decoder=StableCascadeUNet.from_pretrained(tmp_path / 'decoder_lite'), tokenizer=None,
        text_encoder=None, scheduler=DDPMWuerstchenScheduler(),
        vqgan=PaellaVQModel.from_pretrained(tmp_path / 'vqgan'), latent_dim_scale=2.0)
    z = torch.randn(1, 4, 4, 4)
    torch.testing.assert_close(wrapper.decode(z), reference_frame(pipe, z))
    with pytest.raises(FileNotFoundError, match='nothing is downloaded'):
        MODELS.build(dict(type='StableCascadeDecoder', pretrained_path=str(tmp_path),
                          decoder_subfolder='decoder')).decode(z)
    with pytest.raises(ValueError, match='exactly one of'):
        StableCascadeDecoder()


def test_encoding_is_pluggable():
    wrapper = make_decoder()
    with pytest.raises(NotImplementedError, match='diffusers ships no Stage C image encoder'):
        wrapper.encode(torch.zeros(1, 3, 32, 32))
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, kernel_size=8, stride=8)
    wrapper = make_decoder(encoder=conv, scale_factor=0.5)
    clip = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    latents = wrapper.encode(clip)
    assert latents.shape == (2, 4, 5, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(latents[1, :, 3], conv(clip[1:2, :, 3])[0] * 0.5)
