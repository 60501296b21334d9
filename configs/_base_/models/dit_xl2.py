# DiT-XL/2 on 256x256 images through the SD VAE (32x32x4 latents), class-conditional
# on ImageNet's 1000 classes, trained with DiT's Gaussian diffusion (learned sigma,
# hybrid MSE + VLB loss, 1000 linear-beta steps).
model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='DiT', input_size=32, patch_size=2, in_channels=4, hidden_size=1152,
        depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1,
        num_classes=1000, learn_sigma=True),
    diffusion=dict(type='GaussianDiffusion', num_timesteps=1000, learn_sigma=True),
    # Latents are pre-extracted (tools/extract_features.py); the VAE is only used
    # by tools/infer.py to decode. Point it at a local diffusers directory, e.g.
    # --cfg-options model.vae.pretrained_path=checkpoints/sd-vae-ft-ema
    vae=dict(type='AutoencoderKLWrapper', pretrained_path='checkpoints/sd-vae-ft-ema',
             scale_factor=0.18215),
    latent_shape=(4, 32, 32),
    num_classes=1000,
)
# What tools/infer.py uses unless told otherwise (DiT's sample.py defaults).
sample_cfg = dict(sampler='ddpm', num_steps=250, cfg_scale=4.0)
