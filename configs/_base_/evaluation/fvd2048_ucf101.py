# FVD of 2048 generated 16-frame clips against 2048 real UCF-101 clips (the FVD-16
# setting of StyleGAN-V and Latte: 2048 real, 2048 generated, 16 frames; Latte takes
# every 3rd frame), with StyleGAN-V's i3d_torchscript.pt. The reference is made once by
# tools/make_reference.py --max-samples 2048 (a seeded random subset of the videos, as
# StyleGAN-V samples its real clips at random; the whole training set, ~9.5K clips,
# gives other numbers) and its statistics cached, see docs/evaluation.md.
evaluation = dict(
    num_samples=2048,
    batch_size=8,
    seed=0,
    metrics=[
        dict(type='FVD',
             reference='data/ucf101_16x256_fvd_reference.npz',
             extractor=dict(type='I3DTorchScript', weights='checkpoints/i3d_torchscript.pt')),
    ],
)
