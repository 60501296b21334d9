# ImageNet-1K train at 256x256, encoded once by tools/extract_features.py into the
# packed latent store (posterior moments + horizontal-flip copies). Per-GPU batch 32:
# 8 GPUs give DiT's global batch of 256.
data_root = 'data/imagenet256_latents'
train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='PackedLatentDataset', data_root=data_root,
                 sample_posterior=True, random_flip=True),
)
