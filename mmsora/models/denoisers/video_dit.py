"""VideoDiT: a spatio-temporal DiT for latent video (images are one-frame videos).

Two block layouts, both built from DiT's adaLN-Zero block (Peebles & Xie 2023,
https://arxiv.org/abs/2212.09748):

* ``'latte'``: Latte's "variant 1, interleaved" (Ma et al., "Latte: Latent Diffusion
  Transformer for Video Generation", 2024, https://arxiv.org/abs/2401.03048;
  Vchitect/Latte ``models/latte.py``): even blocks attend over the H*W tokens of each
  frame, odd blocks over the T tokens at each spatial location. ``depth`` counts both,
  so Latte-XL/2 (depth 28) has 14 spatial and 14 temporal blocks.
* ``'stdit'``: Open-Sora's STDiT (hpcaitech/Open-Sora v1.0, ``STDiTBlock``): each block
  does spatial attention, then temporal attention (output projection zero-initialised),
  then (text) cross-attention, then the MLP.

Conditioning is DiT's adaLN-Zero from the timestep (+ class label), or, for text, the
timestep plus PixArt-alpha / Open-Sora style cross-attention to projected T5 tokens.

An image DiT checkpoint (original key layout) inflates into a VideoDiT with
:func:`inflate_dit_state_dict` / :meth:`VideoDiT.load_image_dit` so that the untrained
video model *is* the image model applied frame by frame, exactly.

Sizes: reuse DiT's presets, e.g. ``VideoDiT(**dit_preset('DiT-XL/2'), block_type='latte')``
is Latte-XL/2 (DiT-XL/2 widths, depth 28 = 14 spatial + 14 temporal blocks). Inflating
DiT-XL/2 exactly needs one spatial block per DiT block: ``block_type='stdit'`` with
depth 28, or ``'latte'`` with depth 56.
"""
from collections.abc import Mapping
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from mmsora.registry import MODELS
from ..layers import (Attention, LabelEmbedder, Mlp, PatchEmbed, TimestepEmbedder,
                      get_1d_sincos_pos_embed_from_grid, get_2d_sincos_pos_embed, modulate)
from ..layers.caption_embedder import CaptionEmbedder
from ..layers.checkpointing import check_checkpoint_every, checkpointed_call
from ..layers.cross_attention import MultiHeadCrossAttention
from .dit import FinalLayer

TextCond = Union[torch.Tensor, Tuple[torch.Tensor, Optional[torch.Tensor]], Mapping]


# --------------------------------------------------------------------------- #
#                          Space / time token layouts                          #
# --------------------------------------------------------------------------- #
# The residual stream is (N, T * S, D), frame-major; attention regroups it.
def spatial_attention(attn: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Self-attention over the S tokens of each frame: (N, T * S, D) -> (N, T * S, D)."""
    N, L, D = x.shape
    return attn(x.reshape(N * num_frames, L // num_frames, D)).reshape(N, L, D)


def temporal_attention(attn: nn.Module, x: torch.Tensor, num_frames: int,
                       temp_embed: torch.Tensor) -> torch.Tensor:
    """Self-attention over the T tokens at each location, ``temp_embed`` (1, T, D) added
    to its input only: (N, T * S, D) -> (N, T * S, D)."""
    N, L, D = x.shape
    S = L // num_frames
    x = x.reshape(N, num_frames, S, D).transpose(1, 2).reshape(N * S, num_frames, D)
    x = attn(x + temp_embed)  # (N * S, T, D)
    return x.reshape(N, S, num_frames, D).transpose(1, 2).reshape(N, L, D)


def split_text_condition(y: TextCond, mask: Optional[torch.Tensor] = None):
    """Text condition as tokens, ``(tokens, mask)`` or ``{'emb', 'mask'}`` -> (tokens, mask)."""
    if isinstance(y, Mapping):
        return y['emb'], y.get('mask', mask)
    if isinstance(y, (tuple, list)):
        return y[0], y[1]
    return y, mask


# --------------------------------------------------------------------------- #
#                                    Blocks                                    #
# --------------------------------------------------------------------------- #
class LatteBlock(nn.Module):
    """A DiT block (adaLN-Zero) attending over space or over time, + optional cross-attn.

    Submodule names are DiTBlock's (``norm1, attn, norm2, mlp, adaLN_modulation``), so a
    DiT block's weights load into a spatial LatteBlock key for key.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
                 temporal: bool = False, cross_attn: bool = False):
        super().__init__()
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.cross_attn = (MultiHeadCrossAttention(hidden_size, num_heads)
                           if cross_attn else None)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                       act_layer=lambda: nn.GELU(approximate='tanh'), drop=0)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, num_frames: int,
                temp_embed: torch.Tensor, cond: Optional[torch.Tensor] = None,
                cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (N, T * S, D), c: (N, D), temp_embed: (1, T, D), cond: (N, L, D) -> (N, T * S, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        if self.temporal:
            h = temporal_attention(self.attn, h, num_frames, temp_embed)
        else:
            h = spatial_attention(self.attn, h, num_frames)
        x = x + gate_msa.unsqueeze(1) * h
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, cond, cond_mask)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class STDiTBlock(nn.Module):
    """Spatial attention, temporal attention, optional cross-attention and MLP in one block.

    Open-Sora's STDiT block with DiT's per-block adaLN-Zero; its DiT-named submodules
    take a DiT block's weights, ``norm_temp`` / ``attn_temp`` are the temporal part.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0,
                 cross_attn: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm_temp = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn_temp = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.cross_attn = (MultiHeadCrossAttention(hidden_size, num_heads)
                           if cross_attn else None)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=int(hidden_size * mlp_ratio),
                       act_layer=lambda: nn.GELU(approximate='tanh'), drop=0)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, num_frames: int,
                temp_embed: torch.Tensor, cond: Optional[torch.Tensor] = None,
                cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (N, T * S, D), c: (N, D), temp_embed: (1, T, D), cond: (N, L, D) -> (N, T * S, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        h = spatial_attention(self.attn, modulate(self.norm1(x), shift_msa, scale_msa),
                              num_frames)
        x = x + gate_msa.unsqueeze(1) * h
        # As in STDiT, the temporal branch shares the attention modulation and gate; its
        # zero-initialised output projection makes it exactly zero at init.
        h = temporal_attention(self.attn_temp,
                               modulate(self.norm_temp(x), shift_msa, scale_msa),
                               num_frames, temp_embed)
        x = x + gate_msa.unsqueeze(1) * h
        if self.cross_attn is not None:
            x = x + self.cross_attn(x, cond, cond_mask)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


# --------------------------------------------------------------------------- #
#                                Core VideoDiT Model                           #
# --------------------------------------------------------------------------- #
@MODELS.register_module()
class VideoDiT(nn.Module):
    """Spatio-temporal diffusion transformer on video latents (N, C, T, H, W).

    Args:
        input_size (int | tuple[int, int]): Latent side, or (height, width) for
            non-square clips (480x848 pixels -> (60, 106) SD-VAE latents). Defaults to 32.
        patch_size (int): Spatial patch size p (frames are not merged). Defaults to 2.
        in_channels (int): Latent channels. Defaults to 4.
        hidden_size (int): Token width D. Defaults to 1152.
        depth (int): Number of blocks; for ``'latte'`` spatial and temporal blocks both
            count (must be even). Defaults to 28.
        num_heads (int): Attention heads. Defaults to 16.
        mlp_ratio (float): MLP hidden width over D. Defaults to 4.0.
        class_dropout_prob (float): Label (or caption) dropout rate for classifier-free
            guidance. Defaults to 0.1.
        num_classes (int): Number of classes (``condition='class'``); label
            ``num_classes`` is the null class. Defaults to 1000.
        learn_sigma (bool): Also predict the variance (doubles the output channels).
            Defaults to True.
        num_frames (int): Most frames a clip may have (rows of the temporal position
            table). Defaults to 16.
        block_type (str): ``'latte'`` (interleaved spatial / temporal blocks) or
            ``'stdit'`` (spatial + temporal attention in every block). Defaults to 'latte'.
        condition (str): ``'class'`` (labels, adaLN) or ``'text'`` (text-encoder tokens,
            cross-attention). Defaults to 'class'.
        text_dim (int): Width of the text-encoder tokens (T5-XXL: 4096). Defaults to 4096.
        max_text_len (int): Tokens of the learned null caption (Open-Sora / PixArt: 120).
            Captions of any length are accepted. Defaults to 120.
        grad_checkpointing (bool | int | str): Recompute in the backward pass to save
            activation memory: True checkpoints every block, an int k every k-th block
            (blocks 0, k, 2k, ...); ``'selective'`` recomputes only the elementwise
            ops of every block (see ``layers/checkpointing.py``). Defaults to False.
    """

    # takes and makes clips (N, C, T, H, W) alone, pictures as T = 1: tools/infer.py
    # refuses a latent_shape without a frame axis for it
    makes_clips = True

    def __init__(self,
                 input_size: Union[int, Sequence[int]] = 32,
                 patch_size: int = 2,
                 in_channels: int = 4,
                 hidden_size: int = 1152,
                 depth: int = 28,
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0,
                 class_dropout_prob: float = 0.1,
                 num_classes: int = 1000,
                 learn_sigma: bool = True,
                 num_frames: int = 16,
                 block_type: str = 'latte',
                 condition: str = 'class',
                 text_dim: int = 4096,
                 max_text_len: int = 120,
                 grad_checkpointing: Union[bool, int, str] = False):
        super().__init__()
        if block_type not in ('latte', 'stdit'):
            raise ValueError(f"block_type must be 'latte' or 'stdit', got {block_type!r}")
        if condition not in ('class', 'text'):
            raise ValueError(f"condition must be 'class' or 'text', got {condition!r}")
        if block_type == 'latte' and depth % 2:
            # (depth - 1 is 0 for depth 1: no model)
            evens = ' or '.join(str(d) for d in (depth - 1, depth + 1) if d > 0)
            raise ValueError(f"latte interleaves spatial and temporal blocks: depth must "
                             f"be even, got {depth}; set depth to {evens}, or "
                             f"block_type='stdit' (spatial and temporal attention in "
                             f"every block), which takes any depth")
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_frames = num_frames
        self.block_type = block_type
        self.condition = condition
        self.text_dim = text_dim if condition == 'text' else None
        self.grad_checkpointing = check_checkpoint_every(grad_checkpointing, depth)

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        if condition == 'class':
            self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        else:
            self.y_embedder = CaptionEmbedder(text_dim, hidden_size, class_dropout_prob,
                                              token_num=max_text_len)
        num_patches = self.x_embedder.num_patches
        # Fixed sin-cos tables, frozen Parameters like DiT's pos_embed (same key/shape):
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size),
                                      requires_grad=False)
        self.temp_embed = nn.Parameter(torch.zeros(1, num_frames, hidden_size),
                                       requires_grad=False)

        text = condition == 'text'
        if block_type == 'latte':
            self.blocks = nn.ModuleList([
                LatteBlock(hidden_size, num_heads, mlp_ratio, temporal=bool(i % 2),
                           cross_attn=text) for i in range(depth)
            ])
        else:
            self.blocks = nn.ModuleList([
                STDiTBlock(hidden_size, num_heads, mlp_ratio, cross_attn=text)
                for _ in range(depth)
            ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """DiT's init (xavier linears, adaLN-Zero, zero output layer) + zero new outputs."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)

        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1],
                                            self.x_embedder.grid_size)
        self.pos_embed.data.copy_(pos_embed.float().unsqueeze(0))
        temp_embed = get_1d_sincos_pos_embed_from_grid(
            self.temp_embed.shape[-1], torch.arange(self.num_frames, dtype=torch.float32))
        self.temp_embed.data.copy_(temp_embed.float().unsqueeze(0))

        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        if self.condition == 'class':
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        else:  # PixArt-alpha's caption projection init
            nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
            nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        for block in self.blocks:
            _zero_temporal_and_text_outputs(block)
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)

        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    # ----------------------------------------------------------------------- #
    def unpatchify(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (N, T * S, p * p * C) -> (N, C, T, H, W)."""
        c = self.out_channels
        p = self.x_embedder.patch_size[0]
        h, w = self.x_embedder.grid_size
        assert num_frames * h * w == x.shape[1]
        x = x.reshape(x.shape[0], num_frames, h, w, p, p, c)
        x = torch.einsum('nthwpqc->ncthpwq', x)
        return x.reshape(x.shape[0], c, num_frames, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: TextCond,
                mask: Optional[torch.Tensor] = None,
                force_drop_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Forward pass of VideoDiT.

        Args:
            x (Tensor): (N, C, T, H, W) video latents, T <= ``num_frames`` (T = 1: images).
            t (Tensor): (N,) diffusion timesteps.
            y (Tensor | tuple | dict): ``condition='class'``: (N,) labels.
                ``condition='text'``: (N, L, text_dim) text-encoder tokens, or a pair
                ``(tokens, mask)``, or a dict ``{'emb': tokens, 'mask': mask}``.
            mask (Tensor | None): (N, L) text mask, true/1 for real tokens (when ``y`` is
                the bare tokens); None: every token is real.
            force_drop_ids (Tensor | None): (N,), 1 replaces the sample's label/caption
                by the null one (for CFG's unconditional half), as DiT's ``token_drop``.

        Returns:
            Tensor: (N, out_channels, T, H, W).
        """
        N, _, T = x.shape[:3]
        assert T <= self.num_frames, f'{T} frames but the model has {self.num_frames}'
        # Frames are folded into the batch for the per-frame patch embedding.
        x = x.transpose(1, 2).flatten(0, 1)        # (N * T, C, H, W)
        x = self.x_embedder(x) + self.pos_embed    # (N * T, S, D)
        x = x.reshape(N, -1, x.shape[-1])          # (N, T * S, D)
        temp_embed = self.temp_embed[:, :T]        # (1, T, D)
        c = self.t_embedder(t)                     # (N, D)
        cond = cond_mask = None
        if self.condition == 'class':
            c = c + self.y_embedder(y, self.training, force_drop_ids)  # (N, D)
        else:
            y, mask = split_text_condition(y, mask)
            cond, cond_mask = self.y_embedder(y, mask, self.training,
                                              force_drop_ids)  # (N, L, D), (N, L)
        for i, block in enumerate(self.blocks):
            x = checkpointed_call(self.grad_checkpointing, i, block,
                                  x, c, T, temp_embed, cond, cond_mask)  # (N, T * S, D)
        x = self.final_layer(x, c)                 # (N, T * S, p ** 2 * out_channels)
        return self.unpatchify(x, T)               # (N, out_channels, T, H, W)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: TextCond,
                         cfg_scale: float, guidance_channels: int = 3,
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Forward pass with classifier-free guidance, batching both halves (as DiT's).

        The batch holds the conditional half first and the unconditional half second;
        only the first half of ``x`` is used for both. Class labels are taken as given
        (``num_classes`` in the second half, as for DiT). Text: only the first half of
        the captions is read (``y`` may have N or 2N rows); the second half always gets
        the learned null caption.

        Args:
            x (Tensor): (2N, C, T, H, W) latents.
            t (Tensor): (2N,) timesteps.
            y: (2N,) labels, or the text condition (see :meth:`forward`).
            cfg_scale (float): Guidance scale.
            guidance_channels (int): Output channels that get guidance (3: the original
                DiT quirk; ``in_channels``: all of epsilon).
            mask (Tensor | None): Text mask when ``y`` is the bare tokens.

        Returns:
            Tensor: (2N, out_channels, T, H, W), the guided output twice.
        """
        n = len(x) // 2
        half = x[:n]
        combined = torch.cat([half, half], dim=0)
        if self.condition == 'class':
            model_out = self.forward(combined, t, y)
        else:
            y, mask = split_text_condition(y, mask)
            y = torch.cat([y[:n], y[:n]], dim=0)
            mask = None if mask is None else torch.cat([mask[:n], mask[:n]], dim=0)
            drop = torch.cat([torch.zeros(n, dtype=torch.long, device=x.device),
                              torch.ones(n, dtype=torch.long, device=x.device)])
            model_out = self.forward(combined, t, y, mask=mask, force_drop_ids=drop)
        eps, rest = model_out[:, :guidance_channels], model_out[:, guidance_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)

    # ----------------------------------------------------------------------- #
    def load_image_dit(self, state_dict_or_path: Union[Mapping, str],
                       key: Optional[str] = 'auto', prefix: Optional[str] = None,
                       source: Optional[str] = None):
        """Inflate an image DiT (original key layout) into this model, strictly (a
        position or label table of another length is the model's own: said in the
        log, :func:`inflate_dit_state_dict`).

        Args:
            state_dict_or_path (dict | str): A DiT state dict, or a checkpoint file
                (released / fast-DiT / mmengine, read weights-only).
            key (str | None): Checkpoint entry, see ``extract_state_dict``.
            prefix (str | None): Key prefix to strip (``'denoiser.'`` for mmsora runs).
            source (str, optional): What to call the DiT in the log (default: the
                file, else 'the image DiT').

        Returns:
            The ``load_state_dict`` result.
        """
        if isinstance(state_dict_or_path, Mapping):
            dit_sd = state_dict_or_path
        else:
            from mmsora.utils.checkpoint import load_checkpoint_file
            from mmsora.utils.weight_loading import extract_state_dict
            dit_sd = extract_state_dict(load_checkpoint_file(state_dict_or_path),
                                        key=key, prefix=prefix)
        inflated, own = checked_inflation(dit_sd, self)
        from mmsora.utils.weight_loading import fine_tune_tables, say_tables_kept, tables_kept
        kept = tables_kept(own, dit_sd, fine_tune_tables(self))
        if kept:  # another input size or class count
            say_tables_kept(source or (state_dict_or_path if isinstance(
                state_dict_or_path, str) else 'the image DiT'), own, dit_sd, kept)
        return self.load_state_dict(inflated, strict=True)


# --------------------------------------------------------------------------- #
#                          Inflation from an image DiT                         #
# --------------------------------------------------------------------------- #
def checked_inflation(dit_sd: Mapping, video_model: VideoDiT) -> tuple:
    """``(inflated, own)``: :func:`inflate_dit_state_dict` and the model's state dict,
    or ValueError naming the first weight of another shape and the setting to give.
    Works on a model built on the meta device (tools/train.py checks a --load-from
    before the Runner: the refusal came after about 240 lines of start-up, with a
    work dir made)."""
    inflated, own = inflate_dit_state_dict(dit_sd, video_model), video_model.state_dict()
    wrong = [k for k, v in inflated.items() if k in own and own[k].shape != v.shape]
    if wrong:  # else load_state_dict's traceback lists every mismatch
        k = wrong[0]
        from mmsora.utils.weight_loading import null_row_hint
        if k.startswith('final_layer.'):
            hint = ("; the final layer differs: learn_sigma (and in_channels) must "
                    "match the DiT's")
        elif null_row_hint(own[k].shape, inflated[k].shape) and k.startswith('y_embedder.'):
            hint = '; ' + null_row_hint(own[k].shape, inflated[k].shape)
        else:
            hint = "; build it with the DiT's widths, in_channels and patch_size"
        raise ValueError(f'cannot inflate the image DiT: {len(wrong)} weight(s) differ '
                         f'in shape, e.g. {k}: {tuple(inflated[k].shape)} in the DiT, '
                         f'{tuple(own[k].shape)} here{hint}')
    return inflated, own


def _zero_temporal_and_text_outputs(block: nn.Module):
    """Zero the output projections that must start at zero (temporal-in-block, cross-attn).

    A latte temporal block is a whole adaLN-Zero DiT block: its zero gates already make
    it the identity, so its attention projection keeps xavier init (zeroing both the
    gate and the projection would leave both without gradient forever).
    """
    for name in ('attn_temp', 'cross_attn'):
        layer = getattr(block, name, None)
        if layer is not None:
            nn.init.constant_(layer.proj.weight, 0)
            nn.init.constant_(layer.proj.bias, 0)


def spatial_block_indices(model: VideoDiT) -> list:
    """Indices of the blocks that hold DiT's blocks (latte: even ones; stdit: all)."""
    step = 2 if model.block_type == 'latte' else 1
    return list(range(0, len(model.blocks), step))


def inflate_dit_state_dict(dit_sd: Mapping, video_model: VideoDiT) -> dict:
    """A full ``video_model`` state dict holding an image DiT's weights, temporal parts
    set so that the video model equals the DiT applied to each frame, exactly.

    Why it is exact: the spatial path (patch embed + ``pos_embed``, spatial attention,
    MLP, adaLN, final layer) is DiT's, computed on frames folded into the batch. Every
    temporal contribution is multiplied by an exact zero: a latte temporal block is an
    adaLN-Zero block whose modulation is zeroed (gates 0, so ``x + 0 * f(x) == x``), and
    an STDiT block's temporal attention has a zeroed output projection (output exactly
    0). ``temp_embed`` is added only to the *input* of temporal attention, never to the
    residual stream, so it too is multiplied away; were it added to the tokens (Latte's
    choice) it would change every later spatial block. Cross-attention outputs (text
    models) are zeroed likewise; a class-specific label table is not carried into a
    text model (so only class models reproduce the DiT).

    Args:
        dit_sd (Mapping): Original DiT state dict (``x_embedder.*``, ``t_embedder.*``,
            ``y_embedder.*``, ``pos_embed``, ``blocks.N.*``, ``final_layer.*``).
        video_model (VideoDiT): The target; its own values fill the temporal parts.

    Returns:
        dict: Loads into ``video_model`` with ``strict=True``.

    Where the DiT was trained at another input size or class count (at the same
    width), the video model keeps its own position table (its sin-cos of the
    config's grid) and label table (its initialisation): a fine-tune, no longer
    the DiT's outputs frame by frame at the DiT's own size (it was refused).

    Raises:
        ValueError: Depth or width mismatch.
    """
    sd = {k: v.clone() for k, v in video_model.state_dict().items()}
    dit_depth = len({k.split('.')[1] for k in dit_sd if k.startswith('blocks.')})
    spatial = spatial_block_indices(video_model)
    if dit_depth != len(spatial):
        raise ValueError(
            f'the DiT has {dit_depth} blocks but the {video_model.block_type} VideoDiT has '
            f'{len(spatial)} spatial blocks; exact inflation needs one per DiT block '
            f'(latte: depth = 2 x DiT depth; stdit: depth = DiT depth)')
    from mmsora.utils.weight_loading import fine_tune_tables, tables_kept
    # another input size or class count at the same width: the video model's own
    # position table (computed) and label table (new classes) stay
    kept = set(tables_kept(sd, dit_sd, fine_tune_tables(video_model)))
    theirs, ours = tuple(dit_sd['pos_embed'].shape), tuple(sd['pos_embed'].shape)
    if theirs != ours and 'pos_embed' not in kept:
        raise ValueError(f'DiT pos_embed has shape {theirs} but the VideoDiT\'s is {ours}: '
                         f'build it with the DiT\'s input_size / patch_size / hidden_size')

    for k, v in dit_sd.items():
        head = k.split('.')[0]
        if k in kept:
            continue
        if head == 'blocks':
            _, i, rest = k.split('.', 2)
            sd[f'blocks.{spatial[int(i)]}.{rest}'] = v
        elif head == 'y_embedder' and video_model.condition == 'text':
            continue  # class labels mean nothing to a text model
        else:
            sd[k] = v

    # Temporal / text parts: exact zeros where the proof above needs them.
    for i, block in enumerate(video_model.blocks):
        if i not in spatial:  # a latte temporal block: adaLN-Zero, the identity
            sd[f'blocks.{i}.adaLN_modulation.1.weight'].zero_()
            sd[f'blocks.{i}.adaLN_modulation.1.bias'].zero_()
        for name in ('attn_temp', 'cross_attn'):
            if getattr(block, name, None) is not None:
                sd[f'blocks.{i}.{name}.proj.weight'].zero_()
                sd[f'blocks.{i}.{name}.proj.bias'].zero_()
    return sd
