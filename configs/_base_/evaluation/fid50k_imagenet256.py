# FID-50K on ImageNet 256x256, DiT's protocol (Peebles & Xie 2023: 50K samples, 250 DDPM
# steps, cfg 1.5, scored by the ADM evaluator against VIRTUAL_imagenet256_labeled.npz).
# Each sample's class drawn uniformly, as DiT's sample_ddp.py draws them (labels='random',
# from the seed alone: the same on any number of GPUs); sample i uses seed i, where DiT
# seeds each process once (see docs/evaluation.md).
# Add to a config's _base_, or give it to tools/test.py with --evaluation THIS_FILE.
evaluation = dict(
    num_samples=50000,
    batch_size=32,
    seed=0,
    labels='random',
    sample_cfg=dict(sampler='ddpm', num_steps=250, cfg_scale=1.5),
    metrics=[
        dict(type='FID',
             # the ADM evaluator's reference batch: its mu / sigma are read as they are
             reference='data/VIRTUAL_imagenet256_labeled.npz',
             extractor=dict(type='InceptionV3FID',
                            weights='checkpoints/pt_inception-2015-12-05-6726825d.pth'),
             inception_score=True),
    ],
)
