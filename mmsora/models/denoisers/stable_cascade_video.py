"""Stable Cascade's Stage C with temporal layers: a video model in a 42x compressed latent.

Stage C is diffusers' ``StableCascadeUNet`` (Pernias et al., "Würstchen: An Efficient
Architecture for Large-Scale Text-to-Image Diffusion Models", ICLR 2024; Stable Cascade
is Würstchen v3), reused as it is: its blocks, embeddings and state-dict keys. Frames
fold into the batch for its spatial blocks, and after each of its layers (a ResBlock /
TimestepBlock / AttnBlock group) a temporal block mixes every spatial position across
frames, as in Blattmann et al. 2023 ("Align your Latents", VideoLDM). The temporal
blocks' output projections start at zero, so the untrained video model *is* the image
model applied frame by frame; released image weights load into ``unet`` unchanged.
"""
import functools
import math
import os.path as osp
import re
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsora.registry import MODELS
from mmsora.utils import sample_rng
from mmsora.utils.checkpoint import hub_snapshot, local_pretrained_kwargs
from ..layers import PackedLinear, split_heads
from ..layers.attention_backends import attention
from ..layers.checkpointing import checkpointed_call

__all__ = ['StableCascadeVideo', 'TemporalAttention', 'TemporalConv', 'TemporalBlock',
           'STAGE_C_LITE', 'STAGE_C', 'unet_smallest_side']


# --------------------------------------------------------------------------- #
#                    Released Stage C priors (diffusers configs)               #
# --------------------------------------------------------------------------- #
_BLOCKS = (('SDCascadeResBlock', 'SDCascadeTimestepBlock', 'SDCascadeAttnBlock'),) * 2
_STAGE_C_COMMON = dict(
    in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1,
    down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
    block_types_per_layer=_BLOCKS, clip_text_in_channels=1280,
    clip_text_pooled_in_channels=1280, clip_image_in_channels=768, clip_seq=4,
    kernel_size=3, dropout=(0.1, 0.1), self_attn=True,
    timestep_conditioning_type=('sca', 'crp'), switch_level=(False,))
# stabilityai/stable-cascade-prior, subfolder prior_lite (1.03 B parameters).
STAGE_C_LITE = dict(_STAGE_C_COMMON, conditioning_dim=1536, block_out_channels=(1536, 1536),
                    num_attention_heads=(24, 24), down_num_layers_per_block=(4, 12),
                    up_num_layers_per_block=(12, 4))
# stabilityai/stable-cascade-prior, subfolder prior (3.6 B parameters).
STAGE_C = dict(_STAGE_C_COMMON, conditioning_dim=2048, block_out_channels=(2048, 2048),
               num_attention_heads=(32, 32), down_num_layers_per_block=(8, 24),
               up_num_layers_per_block=(24, 8))

# Keys of a folder's config.json that must match the built UNet to load its weights.
_ARCH_KEYS = ('in_channels', 'out_channels', 'conditioning_dim', 'block_out_channels',
              'num_attention_heads', 'down_num_layers_per_block', 'up_num_layers_per_block',
              'block_types_per_layer', 'clip_text_in_channels',
              'clip_text_pooled_in_channels', 'clip_image_in_channels', 'clip_seq',
              'patch_size', 'timestep_ratio_embedding_dim', 'switch_level')


@functools.lru_cache(maxsize=None)
def stage_c_module():
    """diffusers' ``unet_stable_cascade`` module, imported on first use: importing it
    loads every diffusers UNet (seconds), which ``import mmsora.models`` should not pay."""
    from diffusers.models.unets import unet_stable_cascade
    return unet_stable_cascade


def unet_smallest_side(config) -> int:
    """The smallest input side a diffusers ``StableCascadeUNet`` (its ``config``) takes:
    its patch size, times 2 for each level that halves the grid (a 2x2 stride-2
    convolution, or a ``switch_level`` one). Stage C's and Stage B's (the decoder's)."""
    switch = config.switch_level
    halvings = sum(1 for i in range(1, len(config.block_out_channels))
                   if switch is None or switch[i - 1])
    return config.patch_size * 2 ** halvings


# --------------------------------------------------------------------------- #
#                              Temporal layers                                 #
# --------------------------------------------------------------------------- #
def frame_position_embedding(num_frames: int, dim: int, device=None) -> torch.Tensor:
    """Sin-cos table of frame indices, (T, dim); any number of frames."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=device) / half)
    args = torch.arange(num_frames, device=device).float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class TemporalAttention(nn.Module):
    """Self-attention across frames at each spatial position; zero-initialised output."""

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f'channels {channels} not divisible by {num_heads} heads')
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.qkv = PackedLinear(channels, 3 * channels, parts=3)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.attn_backend = 'auto'  # see layers/attention_backends.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) with B = N * H * W sequences of T frames -> (B, T, C)."""
        b, t, c = x.shape
        h = self.norm(x) + frame_position_embedding(t, c, x.device).to(x.dtype)
        q, k, v = split_heads(self.qkv(h), self.num_heads)   # 3 x (B, heads, T, d)
        out = attention(q, k, v, backend=self.attn_backend)      # (B, heads, T, d)
        return x + self.proj(out.transpose(1, 2).reshape(b, t, c))


class TemporalConv(nn.Module):
    """1-D convolution across frames at each spatial position; zero-initialised."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        h = F.silu(self.norm(x)).transpose(1, 2)                 # (B, C, T)
        return x + self.conv(h).transpose(1, 2)


class TemporalBlock(nn.Module):
    """Temporal layers run after one Stage C layer, on (N*T, C, H, W) feature maps."""

    def __init__(self, channels: int, num_heads: int, layers: Sequence[str] = ('attn',)):
        super().__init__()
        unknown = set(layers) - {'attn', 'conv'}
        if unknown or not layers:
            raise ValueError(f"temporal layers must be a non-empty list of 'attn' / 'conv', "
                             f'got {list(layers)}')
        self.layers = nn.ModuleList([
            TemporalAttention(channels, num_heads) if kind == 'attn' else TemporalConv(channels)
            for kind in layers
        ])

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x: (N*T, C, H, W) -> (N*T, C, H, W)."""
        nt, c, h, w = x.shape
        n = nt // num_frames
        seq = x.view(n, num_frames, c, h * w).permute(0, 3, 1, 2) \
            .reshape(n * h * w, num_frames, c)                   # (N*H*W, T, C)
        for layer in self.layers:
            seq = layer(seq)
        out = seq.view(n, h * w, num_frames, c).permute(0, 2, 3, 1)  # (N, T, C, H*W)
        # Hand back x's memory layout (Stage C's blocks leave channels-last strides):
        # the next blocks then take the same kernels as in the image UNet, bit for bit.
        return torch.empty_like(x).copy_(out.reshape(nt, c, h, w))


# --------------------------------------------------------------------------- #
#                          Stage C with temporal layers                        #
# --------------------------------------------------------------------------- #
@MODELS.register_module()
class StableCascadeVideo(nn.Module):
    """Stable Cascade Stage C (diffusers ``StableCascadeUNet``) with temporal layers.

    Text-conditioned like Stage C: CLIP ViT-bigG token states (``clip_text``, the
    text encoder's last hidden states) and its pooled, projected embedding
    (``clip_text_pooled``); Stage C's image-embedding input (``clip_img``) gets zeros,
    as in text-to-image sampling. The null condition (classifier-free guidance and
    training-time condition dropout) is the caption's tokens and pooled embedding
    zeroed (at the caption's length: Stage C attends to every token position);
    a model given no text at all sees one zeroed token.

    Args:
        unet (dict): ``StableCascadeUNet`` constructor arguments (e.g.
            :data:`STAGE_C_LITE`). Must have ``clip_text_in_channels`` and
            ``clip_image_in_channels`` (without both, Stage C ignores the tokens).
        temporal_layers (Sequence[str]): Temporal layers after each Stage C layer, in
            order: ``'attn'`` (attention across frames) and/or ``'conv'`` (a kernel-3
            convolution across frames). Defaults to ('attn',).
        temporal_every (int): Put temporal layers after every k-th Stage C layer of
            each level. Defaults to 1.
        freeze_spatial (bool): Freeze the Stage C UNet (no gradients, kept in eval
            mode, so its dropout is off) and train only the temporal layers.
        cond_dropout_prob (float): Probability of training a sample with the null
            condition, for classifier-free guidance. Defaults to 0.1.
        pretrained_path (str, optional): LOCAL diffusers ``StableCascadeUNet`` folder
            (a download of ``stabilityai/stable-cascade-prior``) loaded into ``unet``
            by :meth:`init_weights`, i.e. when a training run starts.
        pretrained_subfolder (str, optional): Its subfolder, ``'prior_lite'`` or
            ``'prior'`` for the pipeline download.
        grad_checkpointing (bool | str): Recompute each block in the backward pass
            (True), or only the elementwise ops of each block (``'selective'``: the
            convolutions', linears' and attention's outputs kept; see
            ``layers/checkpointing.py``). Defaults to False.
    """

    # takes and makes clips (N, C, T, H, W) alone, pictures as T = 1: tools/infer.py
    # refuses a latent_shape without a frame axis for it
    makes_clips = True

    condition = 'text'

    def __init__(self,
                 unet: dict = STAGE_C_LITE,
                 temporal_layers: Sequence[str] = ('attn',),
                 temporal_every: int = 1,
                 freeze_spatial: bool = False,
                 cond_dropout_prob: float = 0.1,
                 pretrained_path: Optional[str] = None,
                 pretrained_subfolder: Optional[str] = None,
                 grad_checkpointing: Union[bool, str] = False):
        super().__init__()
        unet = dict(unet)
        if unet.get('clip_text_in_channels') is None or unet.get('clip_image_in_channels') is None:
            raise ValueError('unet needs clip_text_in_channels and clip_image_in_channels: '
                             'without both, StableCascadeUNet ignores the text tokens')
        if temporal_every < 1:
            raise ValueError(f'temporal_every must be >= 1, got {temporal_every}')
        self.unet = stage_c_module().StableCascadeUNet(**unet)
        self.in_channels = self.unet.config.in_channels
        self.text_dim = self.unet.config.clip_text_in_channels
        self.pooled_dim = self.unet.config.clip_text_pooled_in_channels
        self.freeze_spatial = freeze_spatial
        self.cond_dropout_prob = cond_dropout_prob
        self.pretrained_path = pretrained_path
        self.pretrained_subfolder = pretrained_subfolder
        if grad_checkpointing not in (False, True, 'selective'):  # 0 and 1 pass too
            raise ValueError("grad_checkpointing must be True/False or 'selective' (every "
                             f'block), got {grad_checkpointing!r}')
        self.grad_checkpointing = grad_checkpointing

        cfg = self.unet.config
        levels = len(cfg.block_out_channels)

        def level_temporal(level, num_blocks):
            per_layer = len(cfg.block_types_per_layer[level])
            return nn.ModuleList([
                TemporalBlock(cfg.block_out_channels[level], cfg.num_attention_heads[level],
                              temporal_layers) if (i + 1) % temporal_every == 0 else nn.Identity()
                for i in range(num_blocks // per_layer)
            ])

        # temporal_down[level][layer] and temporal_up[i][layer] mirror unet.down_blocks
        # and unet.up_blocks (the up path runs from the deepest level to level 0).
        self.temporal_down = nn.ModuleList([
            level_temporal(i, len(self.unet.down_blocks[i])) for i in range(levels)])
        self.temporal_up = nn.ModuleList([
            level_temporal(levels - 1 - i, len(self.unet.up_blocks[i])) for i in range(levels)])
        if freeze_spatial:
            self.unet.requires_grad_(False)

    def train(self, mode: bool = True):
        """A frozen spatial part stays in eval mode (no dropout)."""
        super().train(mode)
        if self.freeze_spatial:
            self.unet.eval()
        return self

    @property
    def smallest_latent_side(self) -> int:
        """The smallest latent side this Stage C samples (its UNet down-samples the grid:
        a smaller one is a convolution's traceback), for ``set_output_size``."""
        return unet_smallest_side(self.unet.config)

    # ------------------------------------------------------------------ weights
    def init_weights(self):
        """Load ``pretrained_path`` into the spatial part when set (mmengine calls this)."""
        if self.pretrained_path:
            self.load_stage_c(self.pretrained_path, self.pretrained_subfolder)

    def load_stage_c(self, path: str, subfolder: Optional[str] = None):
        """Load released Stage C prior weights (a local diffusers folder) into ``unet``.

        The folder's ``config.json`` must describe the same architecture as ``unet``;
        every weight must match (``strict=True``). The temporal layers are untouched.
        A Hugging Face cache folder (``models--stabilityai--stable-cascade-prior``) is
        read in its snapshot, as the text encoder's and the VAE's folders are.
        """
        import json
        if osp.isfile(path):  # Stability's own release (its yaml's
            # generator_checkpoint_path) was told 'has no config.json'
            raise FileNotFoundError(
                f'pretrained_path {path!r} is a file (Stability\'s own format, as '
                'stage_c_lite_bf16.safetensors): give the diffusers folder of '
                'stabilityai/stable-cascade-prior (with prior_lite/ or prior/)')
        if not osp.exists(path):
            raise FileNotFoundError(f'model.denoiser.pretrained_path {path!r} does not exist '
                                    '(give a local stabilityai/stable-cascade-prior folder; '
                                    'nothing is downloaded)')
        given, path = path, hub_snapshot(path)
        folder = osp.join(path, subfolder) if subfolder else path
        config_file = osp.join(folder, 'config.json')
        if not osp.isfile(config_file):
            hint = ('' if subfolder else " (for a stable-cascade-prior download pass "
                    "pretrained_subfolder='prior_lite' or 'prior')")
            raise FileNotFoundError(f'{folder!r} has no config.json: not a local diffusers '
                                    f'StableCascadeUNet folder{hint}; nothing is downloaded')
        with open(config_file) as f:
            theirs = json.load(f)
        ours = self.unet.config
        if theirs.get('effnet_in_channels') and not ours.get('effnet_in_channels'):
            # (each architecture key differed: a line of a dozen mismatches)
            raise ValueError(f'{folder} holds a Stage B (the decoder: it reads EfficientNet '
                             'latents), not a Stage C prior: point pretrained_path / '
                             "pretrained_subfolder at the prior ('prior_lite' or 'prior' "
                             'of stable-cascade-prior)')
        diff = [k for k in _ARCH_KEYS if k in theirs and _plain(theirs[k]) != _plain(ours[k])]
        if diff:
            shown = ', '.join(f'{k}={theirs[k]} (model: {_plain(ours[k])})' for k in diff[:4])
            more = f' and {len(diff) - 4} more' if len(diff) > 4 else ''
            raise ValueError(f'{folder} holds a different Stage C: {shown}{more}')
        src = self._from_pretrained(path, subfolder, folder, given)
        state = src.state_dict()
        self.unet.load_state_dict(state, strict=True)
        if self.freeze_spatial:
            self.unet.requires_grad_(False)
        from mmengine.logging import print_log
        print_log(f'Stage C weights from {folder}: {len(state)} tensors, '
                  f'{sum(v.numel() for v in state.values()) / 1e6:.1f}M parameters'
                  f'{" (frozen)" if self.freeze_spatial else ""}; the temporal layers are '
                  'not in it', logger='current')

    @staticmethod
    def _from_pretrained(path: str, subfolder: Optional[str], folder: str, given: str):
        """diffusers' ``StableCascadeUNet`` of ``folder`` (``path`` / ``subfolder``; the
        user gave ``given``, a cache folder's for its snapshot ``path``): a folder without
        its weights file, or with one that cannot be read, is one line naming it and
        ``model.denoiser.pretrained_path`` (diffusers' tracebacks named
        ``diffusion_pytorch_model.bin`` in the parent folder, or 'Unable to load
        weights')."""
        from mmsora.utils.diffusers_weights import WEIGHT_FILES_SAID, folder_weights
        key = (f'model.denoiser.pretrained_path={given}'
               + (f' model.denoiser.pretrained_subfolder={subfolder}' if subfolder
                  else ''))
        try:  # (shards count with their index and every shard it lists)
            found = folder_weights(folder)
        except (ValueError, FileNotFoundError) as e:  # (a damaged index, a shard lost)
            raise type(e)(f'{e} ({key})') from None
        if found is None:
            raise FileNotFoundError(
                f'Stage C folder {folder!r} has config.json but no weights file '
                f'({WEIGHT_FILES_SAID}): copy the weights in beside it, or give the folder '
                f'that holds them ({key})')
        try:
            return stage_c_module().StableCascadeUNet.from_pretrained(
                path, subfolder=subfolder, torch_dtype=torch.float32,
                **local_pretrained_kwargs(),
                **({} if found.variant is None else dict(variant=found.variant)))
        except OSError as e:  # (diffusers turns every failed read into an OSError)
            said = str(e)
            if 'Unable to load weights' not in said and 'git-lfs' not in said:
                raise
            found = re.search(r"checkpoint file for '(.*?)'", said)
            what = repr(found[1]) if found else f'in {folder!r}'
            lfs = ' (a git-lfs pointer: run git lfs pull there)' if 'git-lfs' in said else ''
            raise ValueError(f'Stage C weights file {what} is damaged or cut short (as by an '
                             f'interrupted download){lfs}: copy it again ({key})') from None

    # ------------------------------------------------------------------ helpers
    def null_condition(self, n: int, device, dtype=torch.float32):
        """Input of a model given no text: one zeroed token and a zeroed pooled embedding."""
        return (torch.zeros(n, 1, self.text_dim, device=device, dtype=dtype),
                torch.zeros(n, self.pooled_dim, device=device, dtype=dtype))

    def _text_inputs(self, y, pooled, n, device, dtype):
        """Checked (N, L, D) tokens and (N, D_pooled) pooled embeddings; dropout in training."""
        if y is None and pooled is None:  # unconditional: the null condition
            y, pooled = self.null_condition(n, device, dtype)
        elif y is None or pooled is None:
            raise ValueError('StableCascadeVideo needs both CLIP token embeddings (y) and '
                             'pooled embeddings (pooled), or neither (unconditional)')
        if y.dim() != 3 or y.shape[0] != n or y.shape[-1] != self.text_dim:
            raise ValueError(f'text tokens must be ({n}, L, {self.text_dim}), got '
                             f'{tuple(y.shape)}')
        if pooled.dim() == 3:  # (N, 1, D) as diffusers' pipelines give it
            pooled = pooled[:, 0]
        if tuple(pooled.shape) != (n, self.pooled_dim):
            raise ValueError(f'pooled text embeddings must be ({n}, {self.pooled_dim}), got '
                             f'{tuple(pooled.shape)}')
        y, pooled = y.to(dtype), pooled.to(dtype)
        if self.training and self.cond_dropout_prob > 0:
            keep = (sample_rng.rand(n, device) >= self.cond_dropout_prob).to(dtype)
            y, pooled = y * keep[:, None, None], pooled * keep[:, None]
        return y, pooled

    def _timestep_embedding(self, t):
        """Stage C's embedding of the timestep ratio; its sca / crp inputs are zero."""
        emb = [self.unet.get_timestep_ratio_embedding(t)]
        emb += [self.unet.get_timestep_ratio_embedding(torch.zeros_like(t))
                for _ in self.unet.config.timestep_conditioning_type]
        return torch.cat(emb, dim=1)

    def _run(self, fn, *args):
        return checkpointed_call(self.grad_checkpointing, 0, fn, *args)

    def _block(self, block, x, r_embed, clip, skip=None):
        """One Stage C block, called as StableCascadeUNet calls it."""
        sc = stage_c_module()
        if isinstance(block, sc.SDCascadeResBlock):
            return self._run(block, x, skip)
        if isinstance(block, sc.SDCascadeAttnBlock):
            return self._run(block, x, clip)
        if isinstance(block, sc.SDCascadeTimestepBlock):
            return self._run(block, x, r_embed)
        return self._run(block, x)

    def _temporal(self, temporal, k, per_layer, x, num_frames):
        """Temporal layers after block ``k`` when it ends a Stage C layer."""
        if (k + 1) % per_layer or isinstance(temporal[k // per_layer], nn.Identity):
            return x
        return self._run(temporal[k // per_layer], x, num_frames)

    # ------------------------------------------------------------------ UNet walk
    def _down_encode(self, x, r_embed, clip, num_frames):
        """``StableCascadeUNet._down_encode`` with temporal layers after each layer."""
        level_outputs = []
        groups = zip(self.unet.down_blocks, self.unet.down_downscalers,
                     self.unet.down_repeat_mappers, self.temporal_down)
        for level, (down_block, downscaler, repmap, temporal) in enumerate(groups):
            per_layer = len(self.unet.config.block_types_per_layer[level])
            x = downscaler(x)
            for i in range(len(repmap) + 1):
                for k, block in enumerate(down_block):
                    x = self._block(block, x, r_embed, clip)
                    x = self._temporal(temporal, k, per_layer, x, num_frames)
                if i < len(repmap):
                    x = repmap[i](x)
            level_outputs.insert(0, x)
        return level_outputs

    def _up_decode(self, level_outputs, r_embed, clip, num_frames):
        """``StableCascadeUNet._up_decode`` with temporal layers after each layer."""
        x = level_outputs[0]
        levels = len(self.unet.up_blocks)
        res_block = stage_c_module().SDCascadeResBlock
        groups = zip(self.unet.up_blocks, self.unet.up_upscalers,
                     self.unet.up_repeat_mappers, self.temporal_up)
        for i, (up_block, upscaler, repmap, temporal) in enumerate(groups):
            per_layer = len(self.unet.config.block_types_per_layer[levels - 1 - i])
            for j in range(len(repmap) + 1):
                for k, block in enumerate(up_block):
                    skip = None
                    if isinstance(block, res_block) and k == 0 and i > 0:
                        skip = level_outputs[i]
                        if x.shape[-2:] != skip.shape[-2:]:
                            x = F.interpolate(x.float(), skip.shape[-2:], mode='bilinear',
                                              align_corners=True).to(x.dtype)
                    x = self._block(block, x, r_embed, clip, skip)
                    x = self._temporal(temporal, k, per_layer, x, num_frames)
                if j < len(repmap):
                    x = repmap[j](x)
            x = upscaler(x)
        return x

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None,
                pooled: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict the noise of a batch of clips.

        Args:
            x (Tensor): (N, C, T, H, W) noisy Stage C latents (images: T = 1).
            t (Tensor): (N,) timestep ratios in [0, 1] (1 is pure noise).
            y (Tensor, optional): (N, L, D_text) CLIP token states; None with
                ``pooled=None`` for the null (unconditional) input.
            mask (Tensor, optional): (N, L) text mask. Accepted and not used: Stage C
                was trained attending to all 77 CLIP positions, padding included.
            pooled (Tensor, optional): (N, D_pooled) pooled CLIP embeddings.

        Returns:
            Tensor: (N, C, T, H, W) predicted noise.
        """
        if x.dim() != 5:
            raise ValueError(f'StableCascadeVideo takes (N, C, T, H, W) latents, got '
                             f'{tuple(x.shape)}')
        n, c, f, h, w = x.shape
        y, pooled = self._text_inputs(y, pooled, n, x.device, x.dtype)
        # Fold frames into the batch: the spatial blocks see N*T images, each with its
        # clip's condition and timestep, exactly as the image UNet would be called.
        clip = self.unet.get_clip_embeddings(
            clip_txt_pooled=pooled.repeat_interleave(f, dim=0)[:, None],
            clip_txt=y.repeat_interleave(f, dim=0),
            clip_img=x.new_zeros(n * f, 1, self.unet.config.clip_image_in_channels))
        r_embed = self._timestep_embedding(
            t.to(x.dtype).expand(n).repeat_interleave(f))          # (N*T, E)
        z = x.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)       # (N*T, C, H, W)
        z = self.unet.embedding(z)
        z = self._up_decode(self._down_encode(z, r_embed, clip, f), r_embed, clip, f)
        z = self.unet.clf(z)                                       # (N*T, C, H, W)
        return z.view(n, f, -1, h, w).permute(0, 2, 1, 3, 4)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor],
                         cfg_scale: float, mask: Optional[torch.Tensor] = None,
                         pooled: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Classifier-free guidance, both halves batched (as DiT's / Stage C's pipeline).

        Only the first half of ``x`` is used for both halves; the first half gets the
        caption (``y`` / ``pooled`` may have N or 2N rows: the first N are read), the
        second half the null condition. Guided noise: ``uncond + s * (cond - uncond)``.

        Args:
            x (Tensor): (2N, C, T, H, W) latents.
            t (Tensor): (2N,) timestep ratios.
            y (Tensor, optional): (N or 2N, L, D_text) CLIP token states.
            cfg_scale (float): Guidance scale.
            mask (Tensor, optional): Not used (see :meth:`forward`).
            pooled (Tensor, optional): (N or 2N, D_pooled) pooled embeddings.

        Returns:
            Tensor: (2N, C, T, H, W), the guided noise twice.
        """
        n = len(x) // 2
        half = x[:n]
        if y is None and pooled is None:
            y, pooled = self.null_condition(n, x.device, x.dtype)
        elif y is None or pooled is None:
            raise ValueError('forward_with_cfg needs both y and pooled, or neither')
        null_y, null_pooled = torch.zeros_like(y[:n]), torch.zeros_like(pooled[:n])
        out = self.forward(torch.cat([half, half]), t, torch.cat([y[:n], null_y]),
                           pooled=torch.cat([pooled[:n], null_pooled]))
        cond, uncond = out.chunk(2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([guided, guided])


def _plain(value):
    """Config values as nested lists (json gives lists where configs hold tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
