"""DiT against an independent reference (diffusers' DiTTransformer2DModel), the
paper's size table, checkpoint loading and gradient checkpointing."""
import argparse
import gc
import os
import os.path as osp
import pickle

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import Timesteps

from mmsora.models import DIT_PRESETS, DiT, dit_flops, dit_preset
from mmsora.registry import MODELS
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.weight_loading import extract_state_dict, load_dit_checkpoint

NUM_CLASSES = 10


def tiny_cfg(**kw):
    cfg = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2,
               num_heads=4, num_classes=NUM_CLASSES, learn_sigma=True)
    cfg.update(kw)
    return cfg


def inputs(cfg, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = cfg['input_size']
    x = torch.randn(n, cfg['in_channels'], s, s, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, cfg['num_classes'], (n,), generator=g)
    return x, t, y


# --------------------------------------------------------------------------- #
#                      Reference: diffusers' DiTTransformer2DModel             #
# --------------------------------------------------------------------------- #
def build_reference(cfg, seed=0):
    """diffusers' DiT at ``cfg``'s size, every weight random (adaLN included)."""
    D, H = cfg['hidden_size'], cfg['num_heads']
    out_channels = cfg['in_channels'] * (2 if cfg['learn_sigma'] else 1)
    ref = DiTTransformer2DModel(
        num_attention_heads=H, attention_head_dim=D // H, in_channels=cfg['in_channels'],
        out_channels=out_channels, num_layers=cfg['depth'], sample_size=cfg['input_size'],
        patch_size=cfg['patch_size'], num_embeds_ada_norm=cfg['num_classes'],
        norm_eps=1e-6)  # the original's LayerNorms use 1e-6 (diffusers' default is 1e-5)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        # The original has ONE t/y embedder feeding every block; diffusers gives each
        # block its own, and its final layer reads block 0's, so make them all equal.
        emb0 = ref.transformer_blocks[0].norm1.emb
        for block in ref.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(emb0.state_dict())
    for m in ref.modules():
        if isinstance(m, Timesteps):
            # The original's timestep_embedding divides by half (shift 0) and puts cos
            # first; diffusers' DiT uses shift 1 (flip_sin_to_cos=True is already cos-first).
            assert m.flip_sin_to_cos
            m.downscale_freq_shift = 0
    return ref.eval()


def rekey_reference(ref):
    """diffusers' state dict in the original DiT release's key layout."""
    sd = ref.state_dict()
    b0 = 'transformer_blocks.0.norm1.emb.'
    out = {
        'pos_embed': ref.pos_embed.pos_embed.clone(),  # a non-persistent buffer there
        'x_embedder.proj.weight': sd['pos_embed.proj.weight'],
        'x_embedder.proj.bias': sd['pos_embed.proj.bias'],
        't_embedder.mlp.0.weight': sd[b0 + 'timestep_embedder.linear_1.weight'],
        't_embedder.mlp.0.bias': sd[b0 + 'timestep_embedder.linear_1.bias'],
        't_embedder.mlp.2.weight': sd[b0 + 'timestep_embedder.linear_2.weight'],
        't_embedder.mlp.2.bias': sd[b0 + 'timestep_embedder.linear_2.bias'],
        'y_embedder.embedding_table.weight': sd[b0 + 'class_embedder.embedding_table.weight'],
        # Both emit (shift, scale) in that order.
        'final_layer.adaLN_modulation.1.weight': sd['proj_out_1.weight'],
        'final_layer.adaLN_modulation.1.bias': sd['proj_out_1.bias'],
        'final_layer.linear.weight': sd['proj_out_2.weight'],
        'final_layer.linear.bias': sd['proj_out_2.bias'],
    }
    for i in range(len(ref.transformer_blocks)):
        src, dst = f'transformer_blocks.{i}.', f'blocks.{i}.'
        for wb in ('weight', 'bias'):
            out[dst + f'attn.qkv.{wb}'] = torch.cat(
                [sd[src + f'attn1.to_{n}.{wb}'] for n in 'qkv'], dim=0)
            out[dst + f'attn.proj.{wb}'] = sd[src + f'attn1.to_out.0.{wb}']
            out[dst + f'mlp.fc1.{wb}'] = sd[src + f'ff.net.0.proj.{wb}']
            out[dst + f'mlp.fc2.{wb}'] = sd[src + f'ff.net.2.{wb}']
            # AdaLayerNormZero chunks shift/scale/gate msa, then mlp: the original order.
            out[dst + f'adaLN_modulation.1.{wb}'] = sd[src + f'norm1.linear.{wb}']
    return out


@pytest.mark.parametrize('cfg', [
    tiny_cfg(),
    tiny_cfg(patch_size=4, input_size=16),
    tiny_cfg(hidden_size=48, num_heads=3, depth=3, input_size=12, learn_sigma=False),
    tiny_cfg(patch_size=1, input_size=4, depth=1, hidden_size=32, num_heads=2),
], ids=['p2', 'p4', 'odd-sizes-no-sigma', 'p1'])
def test_matches_diffusers(cfg):
    ref = build_reference(cfg)
    model = DiT(**cfg).eval()
    # Our own sin-cos table (not copied) must equal the reference's.
    torch.testing.assert_close(model.pos_embed, ref.pos_embed.pos_embed, atol=1e-6, rtol=0)
    model.load_state_dict(rekey_reference(ref), strict=True)

    x, t, y = inputs(cfg)
    with torch.no_grad():
        ours = model(x, t, y)
        theirs = ref(x, timestep=t, class_labels=y).sample
    assert ours.shape == theirs.shape == (
        4, cfg['in_channels'] * (2 if cfg['learn_sigma'] else 1), *x.shape[-2:])
    assert theirs.abs().mean() > 1e-2  # a dead reference would prove nothing
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)

    # The null class (label num_classes) is the same row in both.
    y_null = torch.full_like(y, NUM_CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, t, y_null), ref(x, timestep=t, class_labels=y_null).sample,
            atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('guidance_channels', [3, 4])
def test_forward_with_cfg(guidance_channels):
    cfg = tiny_cfg()
    model = DiT(**cfg).eval()
    model.load_state_dict(rekey_reference(build_reference(cfg)))
    # float64: a batch of 4 and a batch of 2 round differently in float32.
    model.double()
    x, t, y = inputs(cfg, n=2)
    x = x.double()
    x2 = torch.cat([x, torch.randn_like(x)])  # second half is ignored by design
    t2 = torch.cat([t, t])
    y2 = torch.cat([y, torch.full_like(y, NUM_CLASSES)])
    with torch.no_grad():
        out = model.forward_with_cfg(x2, t2, y2, cfg_scale=4.0,
                                     guidance_channels=guidance_channels)
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, NUM_CLASSES))
    g = guidance_channels
    guided = uncond[:, :g] + 4.0 * (cond[:, :g] - uncond[:, :g])
    expected = torch.cat([torch.cat([guided, cond[:, g:]], 1),
                          torch.cat([guided, uncond[:, g:]], 1)])
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_label_dropout():
    cfg = tiny_cfg()
    model = DiT(**cfg)
    y = torch.tensor([1, 2, 3, 4])
    emb = model.y_embedder
    table = emb.embedding_table.weight
    assert table.shape[0] == NUM_CLASSES + 1
    forced = emb(y, train=False, force_drop_ids=torch.tensor([1, 0, 1, 0]))
    torch.testing.assert_close(forced, table[torch.tensor([NUM_CLASSES, 2, NUM_CLASSES, 4])])
    torch.testing.assert_close(emb(y, train=False), table[y])
    model_all = DiT(**tiny_cfg(class_dropout_prob=1.0))
    dropped = model_all.y_embedder(y, train=True)
    torch.testing.assert_close(dropped, model_all.y_embedder.embedding_table.weight[
        torch.full_like(y, NUM_CLASSES)])
    assert DiT(**tiny_cfg(class_dropout_prob=0.0)).y_embedder.embedding_table.num_embeddings \
        == NUM_CLASSES


def test_original_init_and_keys():
    model = DiT(**tiny_cfg())
    sd = model.state_dict()
    for key in ['x_embedder.proj.weight', 't_embedder.mlp.0.weight', 't_embedder.mlp.2.bias',
                'y_embedder.embedding_table.weight', 'pos_embed', 'blocks.1.attn.qkv.weight',
                'blocks.1.attn.proj.weight', 'blocks.1.mlp.fc1.weight', 'blocks.1.mlp.fc2.bias',
                'blocks.1.adaLN_modulation.1.weight', 'final_layer.linear.weight',
                'final_layer.adaLN_modulation.1.bias']:
        assert key in sd, key
    assert not model.pos_embed.requires_grad
    assert isinstance(model.pos_embed, torch.nn.Parameter)
    # adaLN-Zero: every block starts as the identity and the output is zero.
    assert all(b.adaLN_modulation[1].weight.abs().sum() == 0 for b in model.blocks)
    assert model.final_layer.linear.weight.abs().sum() == 0
    assert model(*inputs(tiny_cfg())).abs().sum() == 0
    assert 0.01 < model.y_embedder.embedding_table.weight.std() < 0.03


def test_registry_and_preset():
    cfg = dit_preset('DiT-S/8', input_size=8, num_classes=NUM_CLASSES, depth=1)
    model = MODELS.build(dict(type='DiT', **cfg))
    assert isinstance(model, DiT) and len(model.blocks) == 1
    assert model.x_embedder.proj.weight.shape == (384, 4, 8, 8)
    with pytest.raises(KeyError, match='DiT-S/2'):
        dit_preset('DiT-M/2')


# --------------------------------------------------------------------------- #
#                              The paper's size table                          #
# --------------------------------------------------------------------------- #
# Exact parameter counts (nn.Parameters, the frozen pos_embed included, as the
# original's train.py counts them) of the original architecture at 256 px, 1000
# classes, learn_sigma. Per block: 18 D^2 + 15 D. The paper (Table 1/4) rounds them
# to 33M / 130M / 458M / 675M; its Gflops are MACs per forward pass.
PAPER_TABLE = {  # name: (exact params, paper params (M), paper Gflops)
    'DiT-S/2': (32_963_360, 33.0, 6.06), 'DiT-S/4': (32_945_024, 33.0, 1.41),
    'DiT-S/8': (33_148_160, 33.0, 0.36), 'DiT-B/2': (130_512_416, 130.5, 23.01),
    'DiT-B/4': (130_475_648, 130.5, 5.56), 'DiT-B/8': (130_881_536, 130.5, 1.42),
    'DiT-L/2': (458_102_816, 458.0, 80.71), 'DiT-L/4': (458_053_760, 458.0, 19.70),
    'DiT-L/8': (458_594_816, 458.0, 5.01), 'DiT-XL/2': (675_129_632, 675.0, 118.64),
    'DiT-XL/4': (675_074_432, 675.0, 29.05), 'DiT-XL/8': (675_683_072, 675.0, 7.39),
}


def test_presets_param_counts_and_flops():
    assert set(DIT_PRESETS) == set(PAPER_TABLE)
    for name, (exact, paper_m, paper_gflops) in PAPER_TABLE.items():
        with torch.device('meta'):  # no memory, no init cost
            model = DiT(**dit_preset(name))
        n = sum(p.numel() for p in model.parameters())
        assert n == exact, name
        assert abs(n / 1e6 - paper_m) / paper_m < 0.01, name
        macs = dit_flops(**dit_preset(name))
        assert abs(macs / 1e9 - paper_gflops) / paper_gflops < 0.02, name


# --------------------------------------------------------------------------- #
#                                   Checkpoints                                #
# --------------------------------------------------------------------------- #
class _Pwn:
    """Pickles to a call that creates a file: what weights_only must refuse."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture
def trained_pair():
    """A tiny DiT with random (non-zero) weights and a fresh one to load into."""
    cfg = tiny_cfg()
    src = DiT(**cfg).eval()
    src.load_state_dict(rekey_reference(build_reference(cfg, seed=3)))
    return cfg, src, DiT(**cfg).eval()


def _same_outputs(cfg, a, b):
    x, t, y = inputs(cfg)
    with torch.no_grad():
        torch.testing.assert_close(a(x, t, y), b(x, t, y), atol=0, rtol=0)


def test_checkpoint_formats(tmp_path, trained_pair, capsys):
    cfg, src, _ = trained_pair
    sd = src.state_dict()
    noise = {k: torch.randn_like(v) for k, v in sd.items()}
    variants = {
        'raw.pt': (sd, {}),  # the released DiT-XL-2-256x256.pt layout
        # DiT's / fast-DiT's / SiT's train.py save their argparse.Namespace as 'args'
        # (refused as 'could run code' until Dec 4 2026)
        'fast_dit.pt': ({'model': noise, 'ema': sd, 'opt': {'state': {}, 'param_groups': []},
                         'args': argparse.Namespace(model='DiT-XL/2', lr=1e-4,
                                                    results_dir='results')}, {}),
        'fast_dit_model.pt': ({'model': sd, 'ema': noise}, {'key': 'model'}),
        'mmengine.pth': ({'meta': {'iter': 10},
                          'state_dict': {**{'denoiser.' + k: v for k, v in sd.items()},
                                         **{'vae.w': torch.zeros(1)}}},
                         {'prefix': 'denoiser.'}),
        'mmengine_ema.pth': ({'meta': {}, 'state_dict': {
            **{'ema_model.module.denoiser.' + k: v for k, v in sd.items()},
            **{'denoiser.' + k: noise[k] for k in sd}}},
            {'prefix': 'ema_model.module.denoiser.'}),
    }
    for name, (obj, kwargs) in variants.items():
        path = tmp_path / name
        torch.save(obj, path)
        fresh = DiT(**cfg).eval()
        load_dit_checkpoint(fresh, str(path), **kwargs)
        _same_outputs(cfg, src, fresh)
    # tools/infer.py's and tools/test.py's loader takes the same files: the released
    # layout (the weights themselves) with or without --no-ema (it failed: "checkpoint
    # has no entry 'ema'"), fast-DiT's EMA or raw weights
    from types import SimpleNamespace

    from mmsora.apis.inference import load_weights
    for name, use_ema in (('raw.pt', True), ('raw.pt', False), ('fast_dit.pt', True),
                          ('fast_dit_model.pt', False)):
        holder = SimpleNamespace(denoiser=DiT(**cfg).eval())
        capsys.readouterr()
        load_weights(holder, str(tmp_path / name), use_ema=use_ema)
        _same_outputs(cfg, src, holder.denoiser)
        # --no-ema on the one set of weights a plain state dict holds is said, not silent
        warned = capsys.readouterr().err
        assert (f'warning: --no-ema: {tmp_path / name} is a plain state dict, one set of '
                'weights' in warned) == (name == 'raw.pt' and not use_ema), warned
    # 'auto' on a fast-DiT checkpoint prefers the EMA weights.
    picked = extract_state_dict(load_checkpoint_file(tmp_path / 'fast_dit.pt'))
    assert torch.equal(picked['pos_embed'], sd['pos_embed'])
    assert torch.equal(picked['final_layer.linear.weight'], sd['final_layer.linear.weight'])


@pytest.mark.skipif(not osp.exists('/proc/self/maps'), reason='reads /proc/self/maps')
def test_checkpoint_files_are_mapped_not_read(tmp_path, trained_pair):
    """load_checkpoint_file maps the file (copy-on-write): only the tensors used are
    read, so sampling from a training checkpoint does not read its optimizer state.
    The mapping ends with the tensors; writing to a tensor leaves the file as it was;
    files in torch's legacy format, and mmengine's loader inside a resume (which keeps
    the optimizer state for the run), read the file instead."""
    from mmsora.engine.compat import _reading_whole_checkpoints, load_from_local_weights_only
    _, src, _ = trained_pair
    sd = src.state_dict()
    path, legacy = tmp_path / 'run.pth', tmp_path / 'legacy.pth'
    torch.save({'state_dict': sd, 'optimizer': {'state': {}}}, path)
    torch.save({'state_dict': sd}, legacy, _use_new_zipfile_serialization=False)

    def mapped(p):
        with open('/proc/self/maps') as f:
            return str(p) in f.read()

    obj = load_checkpoint_file(path)
    assert mapped(path)
    for key, value in sd.items():
        assert torch.equal(obj['state_dict'][key], value), key
    obj['state_dict']['pos_embed'].add_(1)
    del obj
    gc.collect()
    assert not mapped(path)
    assert torch.equal(load_checkpoint_file(path, mmap=False)['state_dict']['pos_embed'],
                       sd['pos_embed'])
    resuming = _reading_whole_checkpoints(load_from_local_weights_only)
    for read in (load_checkpoint_file(legacy), resuming(str(path))):
        assert not mapped(legacy) and not mapped(path)
        assert torch.equal(read['state_dict']['pos_embed'], sd['pos_embed'])


def test_checkpoint_safetensors(tmp_path, trained_pair):
    from safetensors.torch import save_file
    cfg, src, fresh = trained_pair
    path = tmp_path / 'dit.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    load_dit_checkpoint(fresh, str(path))
    _same_outputs(cfg, src, fresh)


def test_checkpoint_errors(tmp_path, trained_pair):
    cfg, src, _ = trained_pair
    missing = tmp_path / 'nope' / 'DiT-XL-2-256x256.pt'
    with pytest.raises(FileNotFoundError, match='DiT-XL-2-256x256.pt'):
        load_checkpoint_file(missing)

    path = tmp_path / 'small.pt'
    torch.save(src.state_dict(), path)
    bigger = DiT(**tiny_cfg(input_size=16))  # 64 tokens vs the checkpoint's 16
    with pytest.raises(ValueError, match=r'\(1, 16, 64\).*\(1, 64, 64\)'):
        load_dit_checkpoint(bigger, str(path))

    with pytest.raises(KeyError, match='prefix'):
        extract_state_dict({'state_dict': {'a.w': torch.zeros(1)}}, prefix='denoiser.')
    with pytest.raises(KeyError, match='ema'):
        extract_state_dict({'foo': 1}, key='ema')


def test_checkpoint_refuses_pickled_code(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pt'
    torch.save({'pos_embed': torch.zeros(1), 'payload': _Pwn(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match='weights_only'):
        load_checkpoint_file(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- #
#                              Gradient checkpointing                          #
# --------------------------------------------------------------------------- #
def test_grad_checkpointing_same_gradients():
    cfg = tiny_cfg()
    plain = DiT(**cfg)
    plain.load_state_dict(rekey_reference(build_reference(cfg, seed=5)))
    ckpt = DiT(**cfg, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = inputs(cfg)
    grads = []
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(0)  # the same labels dropped in both runs
        loss = model(x, t, y)[:, :4].pow(2).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    assert grads[0]['blocks.0.adaLN_modulation.1.weight'].abs().sum() > 0
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)
