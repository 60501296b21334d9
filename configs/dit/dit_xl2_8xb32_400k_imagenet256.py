# DiT-XL/2, ImageNet 256x256: the paper's recipe (Peebles & Xie 2023, Table 4:
# FID-50K 2.27 with cfg 1.5 and 250 DDPM steps after 7M iterations; 400K here as
# in the paper's ablations). 8 GPUs x 32 = global batch 256, AdamW 1e-4, no weight
# decay, EMA 0.9999. Train:  bash tools/dist_train.sh THIS_FILE 8
_base_ = [
    '../_base_/models/dit_xl2.py',
    '../_base_/datasets/imagenet256_latents.py',
    '../_base_/schedules/dit_400k.py',
    '../_base_/default_runtime.py',
]
