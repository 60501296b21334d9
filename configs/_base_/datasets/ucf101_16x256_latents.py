# UCF-101 clips of 16 frames at 256x256, SD-VAE latents (4x16x32x32 per clip) in the
# packed latent store, with their class labels (0..100), written once by
#   python tools/make_manifest.py data/ucf101 --out data/ucf101/train.csv --label-from-folder
#   python tools/extract_features.py --manifest data/ucf101/train.csv --num-frames 16 \
#       --frame-stride 3 --size 256 --vae checkpoints/sd-vae-ft-ema --flip \
#       --out data/ucf101_16x256_latents
# (add --clips-per-video 4 for four 16-frame windows of each video, Latte's temporal
# crops in part: four times the store, 13k -> 53k items)
data_root = 'data/ucf101_16x256_latents'
train_dataloader = dict(
    batch_size=5,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    # Horizontal flips only when the store holds flipped copies.
    dataset=dict(type='PackedLatentDataset', data_root=data_root,
                 sample_posterior=True, random_flip=True),
)
