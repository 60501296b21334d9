# DiT-L/8, ImageNet 256x256: DiT-XL/2's recipe with the L/8 size
# (DiT paper, Table 1: depth 24, hidden 1024, 16 heads, patch 8).
_base_ = './dit_xl2_8xb32_400k_imagenet256.py'
model = dict(denoiser=dict(patch_size=8, hidden_size=1024, depth=24, num_heads=16))
