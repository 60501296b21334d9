"""DiT: the original class-conditional latent diffusion transformer.

Peebles & Xie, "Scalable Diffusion Models with Transformers", ICCV 2023,
https://arxiv.org/abs/2212.09748 ; reference code: facebookresearch/DiT ``models.py``.

The module and parameter names are the original release's, so its checkpoints
(e.g. ``DiT-XL-2-256x256.pt``) load with ``load_state_dict(sd, strict=True)`` and give
the same outputs.
"""
from typing import Union

import torch
import torch.nn as nn

from mmsora.registry import MODELS
from ..layers import (Attention, LabelEmbedder, Mlp, PatchEmbed, TimestepEmbedder,
                      get_2d_sincos_pos_embed, modulate)
from ..layers.checkpointing import check_checkpoint_every, checkpointed_call


# --------------------------------------------------------------------------- #
#                                 Core DiT Model                               #
# --------------------------------------------------------------------------- #
class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        mlp_hidden_dim = int(hidden_size * mlp_ratio)
        self.mlp = Mlp(in_features=hidden_size, hidden_features=mlp_hidden_dim,
                       act_layer=lambda: nn.GELU(approximate='tanh'), drop=0)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D) tokens, c: (N, D) conditioning -> (N, T, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (N, D)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN, then a linear map to patch pixels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (N, T, D), c: (N, D) -> (N, T, p * p * C_out)."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x)


@MODELS.register_module()
class DiT(nn.Module):
    """Diffusion model with a Transformer backbone.

    Args:
        input_size (int): Latent height and width. Defaults to 32 (256 px images).
        patch_size (int): Patch size p. Defaults to 2.
        in_channels (int): Latent channels. Defaults to 4.
        hidden_size (int): Token width D. Defaults to 1152.
        depth (int): Number of DiT blocks. Defaults to 28.
        num_heads (int): Attention heads. Defaults to 16.
        mlp_ratio (float): MLP hidden width over D. Defaults to 4.0.
        class_dropout_prob (float): Label dropout rate for classifier-free guidance;
            0 drops the null-class row. Defaults to 0.1.
        num_classes (int): Number of classes; label ``num_classes`` is the null class.
            Defaults to 1000.
        learn_sigma (bool): Also predict the variance (doubles the output channels).
            Defaults to True.
        grad_checkpointing (bool | int | str): Recompute in the backward pass to save
            activation memory: True checkpoints every block, an int k every k-th block
            (blocks 0, k, 2k, ...), trading less recompute for more memory;
            ``'selective'`` recomputes only the elementwise ops of every block (norms,
            modulation, GELU: about half the memory, no product computed twice; see
            ``layers/checkpointing.py``). Not in the original; defaults to False.
    """

    def __init__(self,
                 input_size: int = 32,
                 patch_size: int = 2,
                 in_channels: int = 4,
                 hidden_size: int = 1152,
                 depth: int = 28,
                 num_heads: int = 16,
                 mlp_ratio: float = 4.0,
                 class_dropout_prob: float = 0.1,
                 num_classes: int = 1000,
                 learn_sigma: bool = True,
                 grad_checkpointing: Union[bool, int, str] = False):
        super().__init__()
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.grad_checkpointing = check_checkpoint_every(grad_checkpointing, depth)

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Will use fixed sin-cos embedding; a frozen Parameter (not a buffer) as in
        # the original, so it sits in the state dict under the same key:
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size),
                                      requires_grad=False)

        self.blocks = nn.ModuleList([
            DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)
        ])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        """Original init: xavier linears, zeroed adaLN and output layer (adaLN-Zero)."""
        # Initialize transformer layers:
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)

        # Initialize (and freeze) pos_embed by sin-cos embedding:
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1],
                                            self.x_embedder.grid_size)
        self.pos_embed.data.copy_(pos_embed.float().unsqueeze(0))

        # Initialize patch_embed like nn.Linear (instead of nn.Conv2d):
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        # Initialize label embedding table:
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)

        # Initialize timestep embedding MLP:
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

        # Zero-out adaLN modulation layers in DiT blocks:
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)

        # Zero-out output layers:
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, T, p * p * C) -> imgs: (N, C, H, W)."""
        c = self.out_channels
        p = self.x_embedder.patch_size[0]
        h, w = self.x_embedder.grid_size
        assert h * w == x.shape[1]

        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum('nhwpqc->nchpwq', x)
        return x.reshape(shape=(x.shape[0], c, h * p, w * p))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward pass of DiT.

        Args:
            x (Tensor): (N, C, H, W) spatial inputs (latent images).
            t (Tensor): (N,) diffusion timesteps.
            y (Tensor): (N,) class labels.

        Returns:
            Tensor: (N, out_channels, H, W).
        """
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), T = H * W / p ** 2
        t = self.t_embedder(t)                   # (N, D)
        y = self.y_embedder(y, self.training)    # (N, D)
        c = t + y                                # (N, D)
        for i, block in enumerate(self.blocks):
            x = checkpointed_call(self.grad_checkpointing, i, block, x, c)  # (N, T, D)
        x = self.final_layer(x, c)               # (N, T, p ** 2 * out_channels)
        return self.unpatchify(x)                # (N, out_channels, H, W)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                         cfg_scale: float, guidance_channels: int = 3) -> torch.Tensor:
        """Forward pass with classifier-free guidance, batching both halves.

        The batch holds the conditional half first and the unconditional (null-label)
        half second; only the first half of ``x`` is used for both.

        Args:
            x (Tensor): (2N, C, H, W) latents.
            t (Tensor): (2N,) timesteps.
            y (Tensor): (2N,) labels, ``num_classes`` in the second half.
            cfg_scale (float): Guidance scale.
            guidance_channels (int): Output channels that get guidance. The original
                guides only the first three channels (a quirk kept for reproducing
                its samples); pass ``in_channels`` to guide all of epsilon.

        Returns:
            Tensor: (2N, out_channels, H, W), the guided output twice.
        """
        # https://github.com/openai/glide-text2im/blob/main/notebooks/text2im.ipynb
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        eps, rest = model_out[:, :guidance_channels], model_out[:, guidance_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


# --------------------------------------------------------------------------- #
#                                 DiT Configs                                  #
# --------------------------------------------------------------------------- #
# The paper's twelve models: size S/B/L/XL x patch 2/4/8.
_DIT_SIZES = {
    'S': dict(depth=12, hidden_size=384, num_heads=6),
    'B': dict(depth=12, hidden_size=768, num_heads=12),
    'L': dict(depth=24, hidden_size=1024, num_heads=16),
    'XL': dict(depth=28, hidden_size=1152, num_heads=16),
}
DIT_PRESETS = {
    f'DiT-{size}/{patch}': dict(**arch, patch_size=patch)
    for size, arch in _DIT_SIZES.items() for patch in (2, 4, 8)
}


def dit_preset(name: str, **overrides) -> dict:
    """Constructor kwargs of a named preset, e.g. ``dit_preset('DiT-XL/2', input_size=64)``.

    Args:
        name (str): One of :data:`DIT_PRESETS` (``'DiT-S/2'`` ... ``'DiT-XL/8'``).
        **overrides: Other :class:`DiT` arguments, applied on top.

    Returns:
        dict: Keyword arguments for :class:`DiT` (without ``type``).
    """
    if name not in DIT_PRESETS:
        raise KeyError(f'unknown DiT preset {name!r}; choose from {sorted(DIT_PRESETS)}')
    return {**DIT_PRESETS[name], **overrides}


def dit_flops(input_size: int = 32, patch_size: int = 2, in_channels: int = 4,
              hidden_size: int = 1152, depth: int = 28, mlp_ratio: float = 4.0,
              learn_sigma: bool = True, frequency_embedding_size: int = 256,
              **unused) -> int:
    """Analytic multiply-accumulates (MACs) of one sample's forward pass.

    The DiT paper's "Gflops" count MACs (DiT-XL/2 at 256 px: 118.6); FLOPs are
    2 x MACs. Norms, activations and softmax are left out, as in the paper.
    Extra ``DiT`` kwargs (``num_heads``, ``num_classes``, ...) are accepted and ignored
    so ``dit_flops(**cfg)`` works on a constructor config.

    Returns:
        int: MACs per sample.
    """
    D, p = hidden_size, patch_size
    T = (input_size // p) ** 2
    out_channels = in_channels * 2 if learn_sigma else in_channels
    mlp_hidden = int(D * mlp_ratio)
    patch = T * in_channels * p * p * D
    cond = frequency_embedding_size * D + D * D  # t_embedder MLP
    block = (T * 3 * D * D          # qkv
             + 2 * T * T * D        # q @ k^T and attn @ v
             + T * D * D            # proj
             + 2 * T * D * mlp_hidden  # fc1, fc2
             + 6 * D * D)           # adaLN modulation (per sample, not per token)
    final = 2 * D * D + T * D * p * p * out_channels
    return patch + cond + depth * block + final
