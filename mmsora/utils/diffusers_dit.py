"""DiT weights saved by diffusers (``DiTTransformer2DModel``, the older
``Transformer2DModel``), read into the original DiT's layout.

The DiT weights on the Hugging Face hub (``facebook/DiT-XL-2-256``, ``-512``) are a
diffusers pipeline folder: ``model_index.json``, ``transformer/`` (``config.json`` and
``diffusion_pytorch_model.safetensors`` or ``.bin``), ``vae/`` and ``scheduler/``. They
were converted from the original release, so they are the same network in other
names, with three differences of layout this module undoes:

* each block holds its own timestep / class embedder (``norm1.emb``), all copies of
  the original's one; the final layer's modulation reads block 0's. Copies that
  differ (a DiT trained in diffusers) cannot become one shared embedder: refused.
* the attention's q, k, v are three linears (the original: one ``qkv``).
* the sin-cos position table is not in the file (diffusers computes it from
  ``sample_size``): it is computed here from ``config.json``, so a 512 px model in a
  256 px config is named as the usual ``pos_embed`` mismatch, not sampled wrongly.

The network that comes out is the original's (timestep frequencies divided by half
the width, LayerNorm eps 1e-6); diffusers' own ``DiTTransformer2DModel`` differs from
it slightly there (``downscale_freq_shift=1``, eps 1e-5 unless its config says).

Every reader of a checkpoint (:func:`mmsora.utils.checkpoint.load_checkpoint_file`)
goes through :func:`read_diffusers_dit` and :func:`is_diffusers_dit`, so a diffusers
folder or file works wherever a DiT ``.pt`` does: ``tools/infer.py --checkpoint``,
``tools/train.py --load-from``, ``model.pretrained_denoiser``, inflation into a video
DiT, ``tools/export_denoiser.py``. The other way, :func:`diffusers_from_dit` writes a
DiT's weights as diffusers' (``tools/export_denoiser.py --diffusers``), and
:func:`dit_scheduler` the scheduler of a ``DiTPipeline`` folder that samples them as
the run's GaussianDiffusion (``tools/export_denoiser.py --pipeline``, which writes it
with :func:`save_dit_scheduler`).
"""
import json
import os
import os.path as osp
from typing import Optional

import torch

from mmsora.models.denoisers.dit import DIT_PRESETS
from mmsora.utils.checkpoint import hub_snapshot, read_json_config
from mmsora.utils.diffusers_weights import WEIGHT_FILES_SAID, folder_weights

__all__ = ['is_diffusers_dit', 'diffusers_dit_folder', 'diffusers_dit_config',
           'dit_pipeline_vae', 'missing_dit_weights', 'read_diffusers_dit',
           'dit_state_from_diffusers', 'diffusers_from_dit', 'dit_scheduler',
           'save_dit_scheduler', 'DIT_HEADS']

# The classes a diffusers DiT transformer's config.json names.
DIT_CLASSES = ('DiTTransformer2DModel', 'Transformer2DModel')
_EMB = 'transformer_blocks.{}.norm1.emb.'

# The same weights' names, the original DiT's and diffusers' (``{}``: weight / bias),
# read one way by dit_state_from_diffusers and the other by diffusers_from_dit.
# Both final modulations emit (shift, scale) in that order; AdaLayerNormZero chunks
# shift / scale / gate of the attention, then of the MLP, as the original's blocks.
TOP_NAMES = (('x_embedder.proj.{}', 'pos_embed.proj.{}'),
             ('final_layer.adaLN_modulation.1.{}', 'proj_out_1.{}'),
             ('final_layer.linear.{}', 'proj_out_2.{}'))
# the shared embedder (diffusers: a copy in each block, under _EMB)
EMBEDDER_NAMES = (('t_embedder.mlp.0.{}', 'timestep_embedder.linear_1.{}'),
                  ('t_embedder.mlp.2.{}', 'timestep_embedder.linear_2.{}'))
LABEL_NAMES = ('y_embedder.embedding_table.weight', 'class_embedder.embedding_table.weight')
# in block i: blocks.{i}. / transformer_blocks.{i}. (q, k, v: one qkv in the original)
BLOCK_NAMES = (('attn.proj.{}', 'attn1.to_out.0.{}'), ('mlp.fc1.{}', 'ff.net.0.proj.{}'),
               ('mlp.fc2.{}', 'ff.net.2.{}'), ('adaLN_modulation.1.{}', 'norm1.linear.{}'))


def is_diffusers_dit(obj) -> bool:
    """Whether a loaded checkpoint is a diffusers DiT transformer's state dict."""
    return (isinstance(obj, dict) and 'pos_embed.proj.weight' in obj
            and 'transformer_blocks.0.attn1.to_q.weight' in obj
            and _EMB.format(0) + 'class_embedder.embedding_table.weight' in obj)


def diffusers_dit_folder(path: str) -> Optional[str]:
    """The transformer folder of a diffusers DiT given as ``path`` (a pipeline folder,
    with ``model_index.json`` and ``transformer/``, or the transformer folder itself),
    or None when ``path`` is neither."""
    if not osp.isdir(path):
        return None
    path = hub_snapshot(path)
    if osp.isfile(osp.join(path, 'model_index.json')) \
            and osp.isdir(osp.join(path, 'transformer')):
        path = osp.join(path, 'transformer')
    config = read_json_config(osp.join(path, 'config.json'))
    return path if config and config.get('_class_name') in DIT_CLASSES else None


def diffusers_dit_config(path: str) -> Optional[dict]:
    """The transformer's ``config.json`` of the diffusers DiT ``path`` names (a pipeline
    or transformer folder, :func:`diffusers_dit_folder`, or its weights file beside
    its config.json), or None where ``path`` is none of them."""
    folder = diffusers_dit_folder(path)
    if folder is None and osp.isfile(path) and osp.basename(path).startswith(
            'diffusion_pytorch_model'):  # (its weights file, named alone)
        folder = diffusers_dit_folder(osp.dirname(osp.abspath(path)))
    return None if folder is None else read_json_config(osp.join(folder, 'config.json'))


def dit_pipeline_vae(path: str) -> Optional[str]:
    """The ``vae/`` folder of the diffusers ``DiTPipeline`` folder ``path``, or None where
    ``path`` is not one (or has no ``vae/``)."""
    if not osp.isdir(path):
        return None
    path = hub_snapshot(path)
    index = read_json_config(osp.join(path, 'model_index.json'))
    vae = osp.join(path, 'vae')
    return vae if index and index.get('_class_name') == 'DiTPipeline' \
        and osp.isdir(vae) else None


def missing_dit_weights(folder: str) -> Optional[str]:
    """What the diffusers DiT transformer folder ``folder`` lacks of its weights, in a
    clause naming the files :func:`read_diffusers_dit` reads them from
    (:func:`~mmsora.utils.diffusers_weights.folder_weights`: the names every diffusers
    folder is judged by), or None where it holds them. The one wording of a DiT folder
    without its weights: the tools gave two (one of them in a branch no tool reached).
    None too for a damaged shard index or one listing a shard not there: the read
    (:func:`read_diffusers_dit`) names the file."""
    try:
        if folder_weights(folder) is not None:
            return None
    except (ValueError, FileNotFoundError):  # (a clause of another's message: not here)
        return None
    return f'no weights ({WEIGHT_FILES_SAID})'


def read_diffusers_dit(folder: str, read_file, map_location='cpu') -> dict:
    """The original-layout state dict of the diffusers DiT transformer ``folder``
    (:func:`diffusers_dit_folder`), its weights read with ``read_file(path,
    map_location)`` (a single file, or the shards an index lists; the plain weights or
    a variant, as :func:`~mmsora.utils.diffusers_weights.folder_weights` finds them).
    Raises FileNotFoundError where ``folder`` holds none of them
    (:func:`missing_dit_weights`) or lacks a shard its index lists, ValueError where
    its shard index is damaged (:func:`~mmsora.utils.diffusers_weights.index_shards`)."""
    config = read_json_config(osp.join(folder, 'config.json'))
    check_dit_config(config, folder)  # before any weight is read
    found = folder_weights(folder)
    if found is None:  # (what every tool given the folder, or its pipeline's, says)
        name = (config or {}).get('_class_name') or 'DiT transformer'
        raise FileNotFoundError(f'{folder} holds a diffusers {name}\'s config.json but '
                                f'{missing_dit_weights(folder)}: copy them in beside it '
                                '(save_pretrained writes both), or give the folder that '
                                'holds them')
    state = {}
    for name in found.files:
        state.update(read_file(osp.join(folder, name), map_location))
    return dit_state_from_diffusers(state, config, folder)


def check_dit_config(config: Optional[dict], source: str) -> None:
    """Raise ValueError where a transformer's config.json is not a DiT's (another
    norm or activation: PixArt's Transformer2DModel, ...)."""
    for key, want in (('norm_type', 'ada_norm_zero'), ('activation_fn', 'gelu-approximate')):
        if (config or {}).get(key, want) != want:
            raise ValueError(f'{source}: a diffusers Transformer2DModel with {key}='
                             f'{config[key]!r}, not a DiT ({key}={want!r})')


def dit_state_from_diffusers(state: dict, config: Optional[dict], source: str) -> dict:
    """A diffusers DiT state dict (:func:`is_diffusers_dit`) in the original DiT's key
    layout, its ``pos_embed`` computed from ``config`` (the transformer's
    config.json). Raises ValueError for what the original cannot hold: no config
    (the table's size is unknown), another activation or norm, weights the
    original has not, per-block embedders that differ."""
    table = state.get('pos_embed.pos_embed')  # (kept in files of some versions)
    if not config and table is None:
        raise ValueError(f'{source}: diffusers DiT weights without the config.json beside '
                         'them: it says the size (sample_size) they were trained at; give '
                         'the transformer folder (or the pipeline folder) instead')
    config = config or {}
    check_dit_config(config, source)
    used = {k for k in state if k.startswith(('proj_out_', 'pos_embed.'))} | {
        k for k in state if k.startswith('transformer_blocks.') and (
            '.norm1.' in k or '.attn1.' in k or '.ff.net.' in k)}
    left = sorted(set(state) - used)
    if left:  # e.g. affine norm2 weights (norm_elementwise_affine=True): the
        # original's norms have none; dropping them would change the network
        raise ValueError(f'{source}: holds {len(left)} weight(s) the original DiT has not '
                         f'(e.g. {left[0]}): not a DiT\'s layout')
    depth = 1 + max(int(k.split('.')[1]) for k in state if k.startswith('transformer_blocks.'))
    emb0 = {k[len(_EMB.format(0)):]: v for k, v in state.items()
            if k.startswith(_EMB.format(0))}
    for i in range(1, depth):
        for name, value in emb0.items():
            other = state[_EMB.format(i) + name]
            if not torch.equal(other, value):
                raise ValueError(
                    f'{source}: block {i}\'s timestep / class embedder ({_EMB.format(i)}'
                    f'{name}) differs from block 0\'s: a DiT trained in diffusers, with an '
                    'embedder per block; the original DiT (and mmsora\'s) shares one, so '
                    'these weights cannot be loaded exactly')
    out = {LABEL_NAMES[0]: emb0[LABEL_NAMES[1]]}
    for ours, theirs in TOP_NAMES + EMBEDDER_NAMES:
        source_of = emb0 if (ours, theirs) in EMBEDDER_NAMES else state
        for wb in ('weight', 'bias'):
            out[ours.format(wb)] = source_of[theirs.format(wb)]
    for i in range(depth):
        src, dst = f'transformer_blocks.{i}.', f'blocks.{i}.'
        for wb in ('weight', 'bias'):
            out[dst + f'attn.qkv.{wb}'] = torch.cat(
                [state[src + f'attn1.to_{n}.{wb}'] for n in 'qkv'], dim=0)
            for ours, theirs in BLOCK_NAMES:
                out[dst + ours.format(wb)] = state[src + theirs.format(wb)]
    if table is None:
        from mmsora.models.layers.embedders import get_2d_sincos_pos_embed
        hidden, patch = out['x_embedder.proj.weight'].shape[0], \
            out['x_embedder.proj.weight'].shape[-1]
        grid = int(config.get('sample_size', 32)) // patch  # (diffusers' default 32)
        table = get_2d_sincos_pos_embed(hidden, grid).float().unsqueeze(0)
    out['pos_embed'] = table.reshape(1, -1, table.shape[-1])
    return out


# Heads of the DiT paper's sizes (S, B, L, XL), by width: a state dict does not say.
DIT_HEADS = {arch['hidden_size']: arch['num_heads'] for arch in DIT_PRESETS.values()}


def diffusers_from_dit(state: dict, num_heads: int, source: str = 'the DiT') -> tuple:
    """An original-layout DiT state dict as diffusers' ``DiTTransformer2DModel``:
    ``(state, config)``, the inverse of :func:`dit_state_from_diffusers` (each block
    gets a copy of the shared embedder, ``qkv`` split, no position table: diffusers
    computes it from ``sample_size``). ``config`` is the transformer's config.json,
    with the original's LayerNorm eps (1e-6). The label table's last row is taken for
    the null class's, as diffusers' always has one (the caller refuses a DiT trained
    with ``class_dropout_prob=0`` where its config says so). Raises ValueError for
    what diffusers' DiT cannot hold: a video DiT, a non-square grid, a width the
    heads do not divide."""
    if any(k.startswith('temp_embed') or '.attn_temp.' in k for k in state):
        raise ValueError(f'{source}: a video DiT; diffusers\' DiTTransformer2DModel is an '
                         'image DiT')
    needed = ('x_embedder.proj.weight', 'y_embedder.embedding_table.weight', 'pos_embed',
              'final_layer.linear.weight', 'blocks.0.attn.qkv.weight')
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f'{source}: not a class-conditional DiT\'s weights (no {missing[0]})')
    patch_w = state['x_embedder.proj.weight']
    hidden, in_channels, patch = patch_w.shape[0], patch_w.shape[1], patch_w.shape[-1]
    if hidden % num_heads:
        raise ValueError(f'{source}: hidden size {hidden} is not a multiple of {num_heads} '
                         'heads')
    tokens = state['pos_embed'].shape[-2]
    grid = int(round(tokens ** 0.5))
    from mmsora.models.layers.embedders import get_2d_sincos_pos_embed
    if grid * grid != tokens or not torch.allclose(
            state['pos_embed'].reshape(tokens, -1).float(),
            get_2d_sincos_pos_embed(hidden, grid).float(), atol=1e-3):
        # (a 2x8 grid has the 16 tokens of a 4x4 one: its table tells them apart, by
        # O(1); the tolerance takes the ~1e-4 that DiT's update_ema moves the frozen
        # table of EMA weights, released DiT files' included)
        raise ValueError(f'{source}: its {tokens}-token position table is not a square '
                         'grid\'s: diffusers\' DiT is square (sample_size)')
    rows = state['y_embedder.embedding_table.weight'].shape[0]
    depth = 1 + max(int(k.split('.')[1]) for k in state if k.startswith('blocks.'))
    emb = {LABEL_NAMES[1]: state[LABEL_NAMES[0]]}
    emb.update({theirs.format(wb): state[ours.format(wb)] for ours, theirs in EMBEDDER_NAMES
                for wb in ('weight', 'bias')})
    out = {theirs.format(wb): state[ours.format(wb)] for ours, theirs in TOP_NAMES
           for wb in ('weight', 'bias')}
    for i in range(depth):
        src, dst = f'blocks.{i}.', f'transformer_blocks.{i}.'
        out.update({_EMB.format(i) + k: v.clone() for k, v in emb.items()})
        for wb in ('weight', 'bias'):
            for n, part in zip('qkv', state[src + f'attn.qkv.{wb}'].chunk(3, dim=0)):
                out[dst + f'attn1.to_{n}.{wb}'] = part.clone()
            for ours, theirs in BLOCK_NAMES:
                out[dst + theirs.format(wb)] = state[src + ours.format(wb)]
    config = {
        '_class_name': 'DiTTransformer2DModel', 'activation_fn': 'gelu-approximate',
        'attention_bias': True, 'attention_head_dim': hidden // num_heads, 'dropout': 0.0,
        'in_channels': in_channels, 'norm_elementwise_affine': False, 'norm_eps': 1e-6,
        'norm_num_groups': 32, 'norm_type': 'ada_norm_zero', 'num_attention_heads': num_heads,
        # diffusers' label table always ends with the null class's row
        'num_embeds_ada_norm': rows - 1, 'num_layers': depth,
        'out_channels': state['final_layer.linear.weight'].shape[0] // (patch * patch),
        'patch_size': patch, 'sample_size': grid * patch, 'upcast_attention': False,
    }
    return {k: v.contiguous() for k, v in out.items()}, config


# GaussianDiffusion's beta schedules as diffusers' schedulers name them: the same
# formulas (diffusers' 'squaredcos_cap_v2' is IDDPM's cosine, max beta 0.999).
SCHEDULE_NAMES = {'linear': 'linear', 'squaredcos_cap_v2': 'squaredcos_cap_v2',
                  'cosine': 'squaredcos_cap_v2'}


def dit_scheduler(objective: dict, sigma_small: bool = False, source: str = 'the run'):
    """diffusers' ``DDIMScheduler`` (as the hub's ``facebook/DiT-XL-2-256`` has) over the
    process of ``objective``, a GaussianDiffusion's settings
    (:func:`~mmsora.utils.trained_settings.objective_settings`): its steps, betas
    (:func:`~mmsora.diffusion.schedulers.dit_scheduler_config`'s, or the cosine ones)
    and prediction, no clipping, ``'leading'`` steps (DiT's ``ddimN`` respacing; DDIM's
    default, left out of the file by :func:`save_dit_scheduler`). A run of fixed
    variance also gets DDPMScheduler's ``variance_type`` (``sigma_small``: the
    posterior's), a key DDIM keeps for the schedulers swapped in with ``from_config``;
    a learned one has none diffusers' DiTPipeline can use (it drops the variance
    channels before the scheduler). Raises ValueError for a schedule diffusers'
    schedulers do not have."""
    from diffusers import DDIMScheduler

    from mmsora.diffusion.schedulers import ddpm_variance_type, dit_scheduler_config
    schedule = objective['beta_schedule']
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(f'{source}: beta_schedule {schedule!r}, which diffusers\' '
                         "schedulers do not have (they take 'linear' and "
                         "'squaredcos_cap_v2')")
    scheduler = DDIMScheduler(**dict(
        dit_scheduler_config(objective['num_timesteps']),  # (DiT's betas, no clipping)
        beta_schedule=SCHEDULE_NAMES[schedule], steps_offset=0, timestep_spacing='leading',
        prediction_type='sample' if objective['predict_xstart'] else 'epsilon'))
    if not objective['learn_sigma']:
        scheduler.register_to_config(variance_type=ddpm_variance_type(sigma_small))
    return scheduler


# DDIMScheduler's defaults that the schedulers swapped in with ``from_config`` have
# others of: left out of the config written (DDIM reads its own back), so a swapped one
# takes its own, as mmsora's sampler of its name does. Written, 'leading' made
# DPMSolverMultistepScheduler.from_config(pipe.scheduler.config) step on [900, 810,
# ..., 90] for 10 steps, mmsora's (diffusers' default 'linspace') on [999, 899, ...].
OWN_DEFAULT_KEYS = ('timestep_spacing',)


def save_dit_scheduler(scheduler, folder: str) -> None:
    """``scheduler`` (:func:`dit_scheduler`'s) as ``folder/scheduler_config.json``, as
    ``save_pretrained`` writes it but without the keys of :data:`OWN_DEFAULT_KEYS` that
    hold the scheduler's own defaults (as the hub's ``facebook/DiT-XL-2-256`` has
    none)."""
    from mmsora.diffusion.schedulers import scheduler_settings
    defaults = scheduler_settings(type(scheduler))
    config = json.loads(scheduler.to_json_string())
    for key in OWN_DEFAULT_KEYS:
        if key in defaults and config.get(key) == defaults[key]:
            del config[key]
    os.makedirs(folder, exist_ok=True)
    with open(osp.join(folder, scheduler.config_name), 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write('\n')
