# A config of one's own: the image demo's recipe (inherited by a path relative to this
# file) with this project's denoiser and dataset. Run from projects/example:
#   python ../../tools/train.py configs/conv_blobs16.py
#   python ../../tools/infer.py work_dirs/conv_blobs16 --labels 0 1 2 3 --out blobs.png
_base_ = ['../../../configs/dit/dit_tiny2_1xb32_1500_shapes16.py']

# The tools import these from the working directory (or PYTHONPATH) before building.
custom_imports = dict(imports=['my_project'], allow_failed_imports=False)

# _delete_: the base's DiT keys (patch_size, depth, ...) would be merged in otherwise.
model = dict(denoiser=dict(_delete_=True, type='TinyConvDenoiser', in_channels=3, width=32,
                           num_classes=4, class_dropout_prob=0.1, learn_sigma=True))
train_dataloader = dict(dataset=dict(_delete_=True, type='ColourBlobs', num_samples=1024,
                                     size=16, num_classes=4, seed=0))
