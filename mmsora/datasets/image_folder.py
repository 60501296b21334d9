"""ImageFolder trees (ImageNet train layout) with DiT's preprocessing.

``center_crop_arr`` is DiT's (https://github.com/facebookresearch/DiT, ``train.py``),
itself ADM's center crop: box-downsample by 2 while the short side is at least twice
the target, bicubic-resize the short side to the target, then center crop.
"""
import os
import os.path as osp

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mmsora.registry import DATASETS
from .utils import WorkerRNGMixin, draw_seed, natural_sort_key

__all__ = ['IMG_EXTENSIONS', 'center_crop_arr', 'scan_image_folder', 'load_image',
           'image_to_tensor', 'ImageFolderDataset', 'UnreadableImageError']

# torchvision's ImageFolder's (what DiT's train.py reads)
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


def center_crop_arr(pil_image, image_size):
    """DiT/ADM center crop of a PIL image to ``image_size`` x ``image_size``."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(
            tuple(x // 2 for x in pil_image.size), resample=Image.BOX)

    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(
        tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)

    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size])


def scan_image_folder(root):
    """Classes and samples of ``root/class_name/*.{jpg,jpeg,png,...}``.

    Returns:
        tuple[list[str], list[tuple[str, int]]]: sorted class names, and
        ``(path relative to root, label)`` pairs sorted by class then file name.
        Label ids are positions in the sorted class list (torchvision's rule).
    """
    if not osp.isdir(root):
        raise FileNotFoundError(f'image folder {root!r} does not exist or is not a directory')
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
    samples = []
    for label, name in enumerate(classes):
        class_dir = osp.join(root, name)
        files = []
        for dirpath, _, filenames in os.walk(class_dir, followlinks=True):
            files += [osp.relpath(osp.join(dirpath, f), root) for f in filenames
                      if f.lower().endswith(IMG_EXTENSIONS)]
        samples += [(f, label) for f in sorted(files, key=natural_sort_key)]
    if not samples:
        raise ValueError(f'image folder {root!r} holds no images in class subfolders '
                         f'(expected root/class_name/*{"|*".join(IMG_EXTENSIONS)})')
    return classes, samples


def load_image(path):
    """Decode an image file to RGB; raises OSError/ValueError if it is unreadable.

    As torchvision's loader (DiT's), ``convert('RGB')``, except for 16- and 32-bit
    grayscale (a 16-bit PNG opens as mode ``I;16``): ``convert`` clips those values
    at 255, so a 16-bit picture came out almost white; they are scaled to 8 bits."""
    with open(path, 'rb') as f:
        img = Image.open(f)
        if img.mode.startswith('I;16') or img.mode == 'I':
            values = np.asarray(img, dtype=np.float64)
            if img.mode != 'I' or values.max() > 255:  # 16-bit range (mode I: a
                values = values / 257.0  # 16-bit PNG on older Pillow; 8-bit data kept)
            img = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), 'L')
        return img.convert('RGB')


def image_to_tensor(pil_image):
    """PIL RGB image → FloatTensor (3, H, W) in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    arr = np.asarray(pil_image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class UnreadableImageError(ValueError):
    """An image of an :class:`ImageFolderDataset` that cannot be decoded; the message
    names the file and the item.

    Training straight from images stopped at the first broken file without a word
    of ``SkipCorruptDataset``, which skips such files: the tools' one-line error
    adds :attr:`hint` (``explain_error``). It is not in the message itself, which
    ``SkipCorruptDataset`` logs for every image it skips, where the advice would be
    noise. (A class attribute: an error from a DataLoader worker is raised again as
    its class, from the message alone.)"""

    hint = ("to skip unreadable images instead, wrap the dataset: train_dataloader = "
            "dict(dataset=dict(_delete_=True, type='SkipCorruptDataset', "
            "dataset=dict(type='ImageFolderDataset', data_root=...)))")


@DATASETS.register_module()
class ImageFolderDataset(WorkerRNGMixin, Dataset):
    """Images of an ImageFolder tree, for encoding with the VAE on the fly.

    Items are ``{'images': FloatTensor (3, image_size, image_size) in [-1, 1],
    'labels': int}``, preprocessed like DiT's ``train.py`` (center crop, random
    horizontal flip from the per-process generator).

    Args:
        data_root (str): The tree's root folder (``data_root/class_name/*.png``).
        image_size (int): Output side. Defaults to 256.
        random_flip (bool): Flip horizontally with probability 0.5. Defaults to True.
        seed (int, optional): Seed of the flips; None draws one from torch's global RNG.
    """

    def __init__(self, data_root, image_size=256, random_flip=True, seed=None):
        self.root = data_root
        self.classes, self.samples = scan_image_folder(self.root)
        self.metainfo = dict(classes=self.classes)
        self.image_size = image_size
        self.random_flip = random_flip
        self.seed = draw_seed(seed)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, idx):
        rel, label = self.samples[idx]
        path = osp.join(self.root, rel)
        try:
            img = center_crop_arr(load_image(path), self.image_size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise UnreadableImageError(f'cannot read image {path!r} (item {idx}): {e}') \
                from None
        if self.random_flip and self.rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return dict(images=image_to_tensor(img), labels=label, sample_idx=idx)

    def item_name(self, idx) -> str:
        """Item ``idx``'s file (LossGuardHook names an item with NaN inputs by it)."""
        return osp.join(self.root, self.samples[idx][0])
