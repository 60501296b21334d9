# DiT-XL/8, ImageNet 256x256: DiT-XL/2's recipe with the XL/8 size
# (DiT paper, Table 1: depth 28, hidden 1152, 16 heads, patch 8).
_base_ = './dit_xl2_8xb32_400k_imagenet256.py'
model = dict(denoiser=dict(patch_size=8, hidden_size=1152, depth=28, num_heads=16))
