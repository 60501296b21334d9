# VideoDiT-XL/2 with Latte's interleaved blocks (Ma et al. 2024, "Latte", variant 1):
# DiT-XL/2 widths (hidden 1152, 16 heads, patch 2), depth 28 = 14 spatial + 14
# temporal blocks, on 16-frame clips of SD-VAE latents (256x256 -> 4x32x32 per frame),
# class-conditional (UCF-101: 101 classes), DiT's Gaussian diffusion (learned sigma,
# hybrid MSE + VLB loss, 1000 linear-beta steps).
model = dict(
    type='LatentDiffusion',
    denoiser=dict(
        type='VideoDiT', input_size=32, patch_size=2, in_channels=4, hidden_size=1152,
        depth=28, num_heads=16, mlp_ratio=4.0, class_dropout_prob=0.1,
        num_classes=101, learn_sigma=True, num_frames=16, block_type='latte',
        condition='class'),
    diffusion=dict(type='GaussianDiffusion', num_timesteps=1000, learn_sigma=True),
    # Latents are pre-extracted; the VAE (decoding frame by frame) is only used by
    # tools/infer.py. Point it at a local diffusers directory, e.g.
    # --cfg-options model.vae.pretrained_path=checkpoints/sd-vae-ft-ema
    vae=dict(type='AutoencoderKLWrapper', pretrained_path='checkpoints/sd-vae-ft-ema',
             scale_factor=0.18215),
    latent_shape=(4, 16, 32, 32),
    num_classes=101,
)
# What tools/infer.py uses unless told otherwise; fps of the written mp4s. Latte's
# UCF-101 sampling (its configs/ucf101/ucf101_sample.yaml): 250 DDPM steps, guidance
# 7.0 on all 4 latent channels (its forward_with_cfg guides model_out[:, :, :4]; DiT
# guides the first 3 alone, VideoDiT's default).
sample_cfg = dict(sampler='ddpm', num_steps=250, cfg_scale=7.0, guidance_channels=4, fps=8)
