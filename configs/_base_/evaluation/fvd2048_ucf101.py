# FVD of 2048 generated 16-frame clips against UCF-101 (the FVD-16 setting of StyleGAN-V
# and Latte, with StyleGAN-V's i3d_torchscript.pt; the reference clips are made once by
# tools/make_reference.py and their statistics cached, see docs/evaluation.md).
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
