"""VideoDiT: shapes, exact inflation from a (randomised) image DiT, text masking and the
null caption, CFG against its formula, gradient checkpointing, registry and size."""
import logging
from unittest import mock

import pytest
import torch

from mmsora.models import DiT, dit_preset
from mmsora.models.denoisers.video_dit import VideoDiT, inflate_dit_state_dict
from mmsora.registry import MODELS

NUM_CLASSES = 10
TEXT_DIM = 24
NULL_LEN = 5


def tiny_cfg(**kw):
    cfg = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2,
               num_heads=2, num_classes=NUM_CLASSES, learn_sigma=True, num_frames=4,
               text_dim=TEXT_DIM, max_text_len=NULL_LEN)
    cfg.update(kw)
    return cfg


def randomise(model, seed=0, scale=0.2):
    """Every weight random, adaLN / zero-initialised outputs included (else tests are vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def video_inputs(n=2, frames=3, seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, frames, size, size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, t, y


def captions(n=2, length=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, length, TEXT_DIM, generator=g)


# --------------------------------------------------------------------------- #
#                                     Shapes                                   #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('block_type', ['latte', 'stdit'])
@pytest.mark.parametrize('condition', ['class', 'text'])
@pytest.mark.parametrize('frames', [1, 3])
def test_output_shapes(block_type, condition, frames):
    model = VideoDiT(**tiny_cfg(block_type=block_type, condition=condition))
    x, t, y = video_inputs(frames=frames)
    cond = y if condition == 'class' else (captions(), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
    randomise(model)
    out = model(x, t, cond)
    assert out.shape == (2, 8, frames, 8, 8)
    assert torch.isfinite(out).all() and out.abs().mean() > 1e-3
    no_sigma = VideoDiT(**tiny_cfg(block_type=block_type, condition=condition,
                                   learn_sigma=False))
    assert no_sigma(x, t, cond).shape == (2, 4, frames, 8, 8)


def test_init_and_layout():
    model = VideoDiT(**tiny_cfg(depth=4, condition='text'))
    assert [b.temporal for b in model.blocks] == [False, True, False, True]
    assert model(*video_inputs()[:2], captions()).abs().sum() == 0  # adaLN-Zero output
    for b in model.blocks:
        assert b.adaLN_modulation[1].weight.abs().sum() == 0
        assert b.cross_attn.proj.weight.abs().sum() == 0
        assert b.attn.proj.weight.abs().sum() > 0  # temporal gates are zero, not both
    stdit = VideoDiT(**tiny_cfg(block_type='stdit'))
    assert all(b.attn_temp.proj.weight.abs().sum() == 0 for b in stdit.blocks)
    assert not model.temp_embed.requires_grad and model.temp_embed.shape == (1, 4, 32)
    assert DiT(**{k: v for k, v in tiny_cfg().items() if k not in (
        'num_frames', 'text_dim', 'max_text_len')}).pos_embed.shape == model.pos_embed.shape
    with pytest.raises(ValueError, match='even'):
        VideoDiT(**tiny_cfg(depth=3))
    with pytest.raises(AssertionError, match='frames'):
        model(torch.zeros(1, 4, 5, 8, 8), torch.zeros(1), captions(1))


# --------------------------------------------------------------------------- #
#                          Exact inflation from an image DiT                   #
# --------------------------------------------------------------------------- #
def dit_cfg():
    return {k: v for k, v in tiny_cfg().items()
            if k not in ('num_frames', 'text_dim', 'max_text_len')}


def per_frame(dit, x, t, y):
    """The image DiT applied to each frame: (N, C, T, H, W) -> (N, C', T, H, W)."""
    return torch.stack([dit(x[:, :, f], t, y) for f in range(x.shape[2])], dim=2)


def inflated_pair(block_type, seed=0):
    dit = randomise(DiT(**dit_cfg()), seed=seed).eval()
    depth = 2 * dit_cfg()['depth'] if block_type == 'latte' else dit_cfg()['depth']
    video = VideoDiT(**tiny_cfg(depth=depth, block_type=block_type))
    randomise(video, seed=seed + 1)  # inflation must not rely on a fresh init
    video.load_image_dit(dit.state_dict())
    return dit, video.eval()


@pytest.mark.parametrize('block_type', ['latte', 'stdit'])
@pytest.mark.parametrize('frames', [1, 3, 4])
def test_inflation_is_exact(block_type, frames):
    dit, video = inflated_pair(block_type)
    x, t, y = video_inputs(frames=frames)
    with torch.no_grad():
        expected = per_frame(dit, x, t, y)
        out = video(x, t, y)
    assert expected.abs().mean() > 1e-2  # a dead DiT would prove nothing
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # The null class and CFG go through the same path.
    y_null = torch.full_like(y, NUM_CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(video(x, t, y_null), per_frame(dit, x, t, y_null),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('block_type', ['latte', 'stdit'])
def test_inflation_test_can_fail(block_type):
    """Waking one temporal weight breaks the equality, and frames then interact."""
    dit, video = inflated_pair(block_type)
    x, t, y = video_inputs(frames=3)
    key = 'blocks.1.adaLN_modulation.1.bias' if block_type == 'latte' \
        else 'blocks.0.attn_temp.proj.weight'
    with torch.no_grad():
        video.state_dict()[key].add_(0.5)
        out = video(x, t, y)
        expected = per_frame(dit, x, t, y)
        assert (out - expected).abs().max() > 1e-2
        # Changing frame 2 now changes frame 0's output (temporal attention works)...
        x2 = x.clone()
        x2[:, :, 2] += 1.0
        assert (video(x2, t, y)[:, :, 0] - out[:, :, 0]).abs().max() > 1e-3
        # ... and the temporal position table is seen (by temporal attention only).
        video.temp_embed.mul_(-1)
        assert (video(x, t, y) - out).abs().max() > 1e-4


def test_inflation_from_file_and_errors(tmp_path):
    dit = randomise(DiT(**dit_cfg()), seed=3).eval()
    path = tmp_path / 'run.pth'
    torch.save({'meta': {}, 'state_dict': {'denoiser.' + k: v
                                           for k, v in dit.state_dict().items()}}, path)
    video = VideoDiT(**tiny_cfg(depth=2, block_type='stdit')).eval()
    video.load_image_dit(str(path), prefix='denoiser.')
    x, t, y = video_inputs(frames=2)
    with torch.no_grad():
        torch.testing.assert_close(video(x, t, y), per_frame(dit, x, t, y),
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='spatial blocks'):
        inflate_dit_state_dict(dit.state_dict(), VideoDiT(**tiny_cfg(depth=2)))  # latte: 1
    with pytest.raises(ValueError, match='pos_embed'):  # another width
        inflate_dit_state_dict({**dit.state_dict(), 'pos_embed': dit.pos_embed[..., :16]},
                               VideoDiT(**tiny_cfg(depth=2, block_type='stdit')))
    learn_sigma = dit_cfg().get('learn_sigma', True)
    with pytest.raises(ValueError, match=r'cannot inflate the image DiT: .*final_layer'
                                         r'.*learn_sigma \(and in_channels\) must match'):
        VideoDiT(**tiny_cfg(depth=2, block_type='stdit', learn_sigma=not learn_sigma)
                 ).load_image_dit(dit.state_dict())
    # Another class count: a fine-tune to new classes keeps the video model's own
    # label table, loads the rest and warns, naming the settings that would keep the
    # DiT's (it was refused)
    video = VideoDiT(**tiny_cfg(depth=2, block_type='stdit', num_classes=NUM_CLASSES + 3))
    own = video.y_embedder.embedding_table.weight.detach().clone()
    with mock.patch('mmengine.logging.print_log') as log:
        video.load_image_dit(dit.state_dict(), source='dit.pt')
    assert torch.equal(video.y_embedder.embedding_table.weight, own)
    assert torch.equal(video.blocks[1].attn.qkv.weight, dit.blocks[1].attn.qkv.weight)
    (message,), kwargs = log.call_args
    assert message.startswith(
        "dit.pt: a label table of another length: the config's y_embedder.embedding_"
        f"table.weight ({NUM_CLASSES + 4}, 32) (the file's: ({NUM_CLASSES + 1}, 32)) starts "
        "from its initialisation, the file's is not used (a fine-tune to new classes; "
        "to keep the file's, set model.denoiser.num_classes and model.num_classes to "
        f'{NUM_CLASSES} with class_dropout_prob > 0'), message
    assert kwargs['level'] == logging.WARNING
    # No null-class row (one row apart): the same classes, a setting to mend, refused
    with pytest.raises(ValueError, match=r'y_embedder.*the label tables are one row apart: '
                                         rf"the file's {NUM_CLASSES + 1} rows are {NUM_CLASSES} "
                                         r'classes and the null-class row for guidance, which '
                                         r'this model has not: set model.denoiser.class_'
                                         r'dropout_prob > 0'):
        VideoDiT(**tiny_cfg(depth=2, block_type='stdit', class_dropout_prob=0.0)
                 ).load_image_dit(dit.state_dict())
    # Another input size: the video model's own sin-cos table, the rest the DiT's
    video = VideoDiT(**tiny_cfg(depth=2, block_type='stdit', input_size=16))
    table = video.pos_embed.detach().clone()
    with mock.patch('mmengine.logging.print_log') as log:
        video.load_image_dit(dit.state_dict())
    assert torch.equal(video.pos_embed, table) and table.shape != dit.pos_embed.shape
    assert torch.equal(video.x_embedder.proj.weight, dit.x_embedder.proj.weight)
    assert "the image DiT: kept the model's own pos_embed" in log.call_args[0][0]
    # A text model takes everything but the label table; its new parts start at zero.
    text = randomise(VideoDiT(**tiny_cfg(depth=4, condition='text')))
    text.load_image_dit(dit.state_dict())
    assert torch.equal(text.blocks[2].attn.qkv.weight, dit.blocks[1].attn.qkv.weight)
    assert all(b.cross_attn.proj.weight.abs().sum() == 0 for b in text.blocks)


# --------------------------------------------------------------------------- #
#                                Text conditioning                             #
# --------------------------------------------------------------------------- #
@pytest.fixture
def text_model():
    torch.manual_seed(0)
    return randomise(VideoDiT(**tiny_cfg(condition='text', block_type='stdit')), seed=7).eval()


def test_text_mask_ignores_padding(text_model):
    x, t, _ = video_inputs(frames=2)
    emb = captions(length=3)
    lengths = torch.tensor([3, 2])
    mask = torch.arange(3)[None] < lengths[:, None]  # (2, 3)
    # The same captions padded to 8 tokens with garbage the mask hides.
    padded = torch.cat([emb, 100 * captions(length=5, seed=9)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    padded[1, 2] = 100.0  # sample 1's third token is padding too
    with torch.no_grad():
        ref = text_model(x, t, emb, mask=mask)
        torch.testing.assert_close(text_model(x, t, (padded, padded_mask.long())), ref,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text_model(x, t, dict(emb=padded, mask=padded_mask)),
                                   ref, atol=1e-5, rtol=1e-5)
        # Without the mask the padding is read: the mask is what makes them equal.
        assert (text_model(x, t, padded) - ref).abs().max() > 1e-3
        # No mask means all tokens are real.
        torch.testing.assert_close(text_model(x, t, emb),
                                   text_model(x, t, emb, mask=torch.ones(2, 3)),
                                   atol=1e-6, rtol=1e-6)
        # Dropped captions see the same null caption whatever the padded length.
        drop = torch.tensor([1, 0])
        a = text_model(x, t, emb, mask=mask, force_drop_ids=drop)
        b = text_model(x, t, padded, mask=padded_mask, force_drop_ids=drop)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a[1], ref[1], atol=1e-5, rtol=1e-5)


def test_null_caption_when_dropped(text_model):
    x, t, _ = video_inputs(frames=2)
    emb = captions(length=7)
    null = text_model.y_embedder.y_embedding.detach()  # (NULL_LEN, TEXT_DIM)
    assert null.shape == (NULL_LEN, TEXT_DIM)
    with torch.no_grad():
        dropped = text_model(x, t, emb, force_drop_ids=torch.tensor([1, 1]))
        # By hand: the null caption given as the caption itself.
        by_hand = text_model(x, t, null[None].expand(2, -1, -1))
        torch.testing.assert_close(dropped, by_hand, atol=1e-5, rtol=1e-5)
        assert (dropped - text_model(x, t, emb)).abs().max() > 1e-3
    # Training with dropout 1 drops every caption.
    always = VideoDiT(**tiny_cfg(condition='text', block_type='stdit', class_dropout_prob=1.0))
    always.load_state_dict(text_model.state_dict())
    always.train()
    with torch.no_grad():
        torch.testing.assert_close(always(x, t, emb), by_hand, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('condition', ['class', 'text'])
@pytest.mark.parametrize('guidance_channels', [3, 4])
def test_forward_with_cfg(condition, guidance_channels):
    model = randomise(VideoDiT(**tiny_cfg(condition=condition)), seed=2).eval().double()
    x, t, y = video_inputs(n=2, frames=2)
    x = x.double()
    x2 = torch.cat([x, torch.randn_like(x)])  # second half is ignored by design
    t2 = torch.cat([t, t])
    if condition == 'class':
        y2 = torch.cat([y, torch.full_like(y, NUM_CLASSES)])
        cond_in, uncond_in = y, torch.full_like(y, NUM_CLASSES)
    else:
        emb = captions().double()
        mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
        y2 = (emb, mask)  # N rows: the null half is made by the model
        null = model.y_embedder.y_embedding.detach()[None].expand(2, -1, -1)
        cond_in, uncond_in = (emb, mask), null
    with torch.no_grad():
        out = model.forward_with_cfg(x2, t2, y2, cfg_scale=4.0,
                                     guidance_channels=guidance_channels)
        cond = model(x, t, cond_in)
        uncond = model(x, t, uncond_in)
    g = guidance_channels
    guided = uncond[:, :g] + 4.0 * (cond[:, :g] - uncond[:, :g])
    expected = torch.cat([torch.cat([guided, cond[:, g:]], 1),
                          torch.cat([guided, uncond[:, g:]], 1)])
    assert (cond - uncond).abs().max() > 1e-3
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-9)


# --------------------------------------------------------------------------- #
#                        Gradient checkpointing and registry                   #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('block_type', ['latte', 'stdit'])
def test_grad_checkpointing_same_gradients(block_type):
    cfg = tiny_cfg(depth=2, block_type=block_type, condition='text')
    plain = randomise(VideoDiT(**cfg), seed=5)
    ckpt = VideoDiT(**cfg, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, _ = video_inputs(frames=2)
    emb, mask = captions(), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(0)  # the same captions dropped in both runs
        model(x, t, emb, mask=mask)[:, :4].pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]['blocks.1.attn.qkv.weight'].abs().sum() > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_registry_build():
    cfg = dict(type='VideoDiT', **dit_preset('DiT-S/8', input_size=8, depth=2,
                                             num_classes=NUM_CLASSES),
               num_frames=4, block_type='stdit')
    model = MODELS.build(cfg)
    assert isinstance(model, VideoDiT) and len(model.blocks) == 2
    assert model.x_embedder.proj.weight.shape == (384, 4, 8, 8)
    assert model(torch.zeros(1, 4, 2, 8, 8), torch.zeros(1), torch.zeros(1).long()).shape \
        == (1, 8, 2, 8, 8)


# --------------------------------------------------------------------------- #
#                                  Model size                                  #
# --------------------------------------------------------------------------- #
def expected_params(D=1152, depth=28, p=2, C=4, input_size=32, num_classes=1000,
                    num_frames=16, block_type='latte', condition='class', text_dim=4096,
                    text_len=120, mlp_ratio=4):
    """Closed-form parameter count (frozen sin-cos tables included, as DiT counts)."""
    S = (input_size // p) ** 2
    C_out = 2 * C
    lin = lambda i, o: i * o + o  # noqa: E731
    block = (lin(D, 6 * D) + lin(D, 3 * D) + lin(D, D)            # adaLN, qkv, proj
             + lin(D, mlp_ratio * D) + lin(mlp_ratio * D, D))     # = 18 D^2 + 15 D
    if block_type == 'stdit':
        block += lin(D, 3 * D) + lin(D, D)                         # temporal attention
    if condition == 'text':
        block += lin(D, D) + lin(D, 2 * D) + lin(D, D)             # cross-attention
        cond = lin(text_dim, D) + lin(D, D) + text_len * text_dim  # y_proj, null caption
    else:
        cond = (num_classes + 1) * D                               # label table + null
    embed = lin(C * p * p, D) + lin(256, D) + lin(D, D) + S * D + num_frames * D
    final = lin(D, 2 * D) + lin(D, p * p * C_out)
    return embed + cond + depth * block + final


def test_xl2_param_counts():
    with torch.device('meta'):
        latte = VideoDiT(**dit_preset('DiT-XL/2'), block_type='latte')
        stdit_text = VideoDiT(**dit_preset('DiT-XL/2'), block_type='stdit', condition='text')
    n = sum(p.numel() for p in latte.parameters())
    # VideoDiT-XL/2 latte (= Latte-XL/2: 14 spatial + 14 temporal blocks) is DiT-XL/2
    # (675,129,632 parameters) plus the 16 x 1152 temporal position table.
    assert n == expected_params() == 675_129_632 + 16 * 1152 == 675_148_064
    n_text = sum(p.numel() for p in stdit_text.parameters())
    assert n_text == expected_params(block_type='stdit', condition='text') == 978_063_776
