# DiT-XL/2, ImageNet 512x512: the 256 px recipe on 64x64x4 latents (1024 tokens).
# The paper's 512 px model (Peebles & Xie 2023, Table 3: FID-50K 3.04 with cfg 1.5
# after 3M iterations) kept the same optimiser, batch 256 and EMA. This config
# samples or fine-tunes the released DiT-XL-2-512x512.pt:
#   python tools/infer.py THIS_FILE --checkpoint DiT-XL-2-512x512.pt --labels 207 ...
# Train:  bash tools/dist_train.sh THIS_FILE 8 --amp
# (latents from: tools/extract_features.py ... --image-size 512)
_base_ = ['./dit_xl2_8xb32_400k_imagenet256.py']
model = dict(denoiser=dict(input_size=64), latent_shape=(4, 64, 64))
train_dataloader = dict(dataset=dict(data_root='data/imagenet512_latents'))
