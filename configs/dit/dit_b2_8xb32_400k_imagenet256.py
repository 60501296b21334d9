# DiT-B/2, ImageNet 256x256: DiT-XL/2's recipe with the B/2 size
# (DiT paper, Table 1: depth 12, hidden 768, 12 heads, patch 2).
_base_ = './dit_xl2_8xb32_400k_imagenet256.py'
model = dict(denoiser=dict(patch_size=2, hidden_size=768, depth=12, num_heads=12))
