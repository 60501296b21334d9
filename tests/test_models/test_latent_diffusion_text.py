"""LatentDiffusion with a text-conditioned VideoDiT: batches of text embeddings or
captions, prompts at sampling time, guidance with the learned null caption."""
import pytest
import torch

from mmsora.registry import MODELS
from tests.tiny_models import make_tiny_text_encoder

pytest.importorskip('transformers')
SHAPE = (4, 2, 8, 8)


def build(t5_dir=None, **diffusion):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='LatentDiffusion',
        denoiser=dict(type='VideoDiT', input_size=8, patch_size=2, in_channels=4,
                      hidden_size=32, depth=2, num_heads=2, learn_sigma=False,
                      num_frames=2, block_type='stdit', condition='text', text_dim=32,
                      max_text_len=4, class_dropout_prob=0.1),
        diffusion=dict(type='GaussianDiffusion', learn_sigma=False, **diffusion),
        text_encoder=None if t5_dir is None else dict(type='HFTextEncoder',
                                                      pretrained_path=t5_dir, max_length=6),
        latent_shape=SHAPE))
    # Make the zero-initialised output and cross-attention matter.
    for p in model.denoiser.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return model


def test_loss_from_text_embeds_and_from_captions(t5_dir):
    model = build(t5_dir)
    x = torch.randn(2, *SHAPE)
    emb, mask, _ = model.encode_text(['a red disk', 'the dog runs in snow'])
    torch.manual_seed(1)
    a = model(latents=x, text_embeds=emb, text_mask=mask)
    torch.manual_seed(1)
    b = model(latents=x, caption=['a red disk', 'the dog runs in snow'])
    torch.testing.assert_close(a['loss'], b['loss'])
    a['loss'].backward()
    text_path = [p.grad for n, p in model.denoiser.named_parameters()
                 if 'y_embedder' in n or 'cross_attn' in n]
    assert text_path and all(g is not None for g in text_path)
    assert sum(g.abs().sum() for g in text_path) > 0  # the captions reach the loss
    assert not any(k.startswith('text_encoder') for k in model.state_dict())


def test_a_clip_pooled_embedding_is_left_out_for_videodit():
    """A CLIP store (or encoder) gives pooled embeddings too; VideoDiT conditions on
    the tokens alone (it was 'unexpected keyword argument pooled' in training and at
    sampling)."""
    model = build()
    x, emb, pooled = torch.randn(2, *SHAPE), torch.randn(2, 4, 32), torch.randn(2, 8)
    torch.manual_seed(1)
    with_pooled = model(latents=x, text_embeds=emb, pooled_text_embeds=pooled)
    torch.manual_seed(1)
    assert torch.equal(with_pooled['loss'], model(latents=x, text_embeds=emb)['loss'])
    model.sample(text_embeds=emb, pooled_text_embeds=torch.randn(2, 8), num_steps=2,
                 sampler='ddim', seeds=[0, 1])


def test_text_of_another_width_at_sampling_is_named(tmp_path):
    """Sampling a trained model with a text encoder of another width failed deep in the
    caption embedder ('mat1 and mat2 shapes cannot be multiplied'); the advice is the
    encoder it was trained with, not another text_dim."""
    model = build(make_tiny_text_encoder(str(tmp_path / 't5'), 't5', width=48))
    with pytest.raises(ValueError, match=r'^text tokens from the text encoder are 48 wide '
                                         r'but model.denoiser.text_dim is 32 .*: give the '
                                         r'text encoder the model was trained with'):
        model.sample(prompts=['a dog'], num_steps=2, sampler='ddim')
    with pytest.raises(ValueError, match=r'^text tokens given \(text_embeds\) are 16 wide'):
        model.sample(text_embeds=torch.randn(1, 4, 16), num_steps=2, sampler='ddim')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_text_embeds_give_the_float32_loss(dtype):
    """A float16 / bfloat16 text store's embeddings reach the model in that dtype
    (PackedLatentDataset): the loss is the one of the same numbers in float32."""
    model = build()
    x = torch.randn(2, *SHAPE)
    emb = torch.randn(2, 4, 32).to(dtype)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    torch.manual_seed(1)
    half = model(latents=x, text_embeds=emb, text_mask=mask)['loss']
    torch.manual_seed(1)
    full = model(latents=x, text_embeds=emb.float(), text_mask=mask)['loss']
    assert half.dtype == torch.float32
    assert torch.equal(half, full)


def test_labels_are_ignored_and_errors():
    model = build()
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ValueError, match='neither `text_embeds`'):
        model(latents=x, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match='no text encoder'):
        model(latents=x, caption=['a', 'b'])
    with pytest.raises(ValueError, match=r'text_embeds must be \(N=2'):
        model(latents=x, text_embeds=torch.randn(3, 4, 32))
    with pytest.raises(ValueError, match='give prompts'):
        model.sample([0, 1], num_steps=2)


def test_text_width_other_than_text_dim_is_named(tmp_path):
    """A T5 of another width than model.denoiser.text_dim (t5-base for the config's
    t5-small) failed deep in the caption embedder with a size mismatch."""
    wide = make_tiny_text_encoder(str(tmp_path / 't5'), 't5', width=48)
    model = build(wide)
    x = torch.randn(2, *SHAPE)
    with pytest.raises(ValueError, match='text tokens from the text encoder are 48 wide but '
                                         'model.denoiser.text_dim is 32 .*set '
                                         'model.denoiser.text_dim=48$'):
        model(latents=x, caption=['a red disk', 'a dog'])
    with pytest.raises(ValueError, match=r'text tokens in the batch \(text_embeds\) are 16 wide'):
        model(latents=x, text_embeds=torch.randn(2, 4, 16))


def test_prompts_with_guidance_per_sample_seeds(t5_dir):
    model = build(t5_dir).eval()
    prompts = ['a red disk', 'a blue ring', 'a cat']
    kw = dict(sampler='ddim', num_steps=3, cfg_scale=4.0)
    full = model.sample(prompts=prompts, seeds=[5, 6, 7], **kw)
    assert full.shape == (3, *SHAPE)
    one = model.sample(prompts=prompts[1:2], seeds=[6], **kw)
    torch.testing.assert_close(one[0], full[1], atol=1e-5, rtol=1e-5)
    # Guidance changes the result, and so does the prompt.
    plain = model.sample(prompts=prompts, seeds=[5, 6, 7], sampler='ddim', num_steps=3)
    assert not torch.allclose(plain, full, atol=1e-4)
    other = model.sample(prompts=['yellow cross'], seeds=[6], **kw)
    assert not torch.allclose(other[0], full[1], atol=1e-4)
    # Pre-computed embeddings give the same samples as prompts.
    emb, mask, _ = model.encode_text(prompts)
    same = model.sample(text_embeds=emb, text_mask=mask, seeds=[5, 6, 7], **kw)
    torch.testing.assert_close(same, full)
