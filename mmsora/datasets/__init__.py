"""Datasets: latent stores (packed shards, fast-DiT .npy files) and image folders."""
from .image_folder import (IMG_EXTENSIONS, ImageFolderDataset, center_crop_arr,
                           image_to_tensor, load_image, scan_image_folder)
from .latent_store import LatentStore, LatentStoreWriter
from .npy_latent_dataset import NpyLatentDataset, list_npy_pairs
from .packed_latent_dataset import PackedLatentDataset
from .synthetic_shapes import SHAPE_CLASSES, SyntheticShapesDataset
from .utils import WorkerRNGMixin, draw_seed, natural_sort_key

__all__ = [
    'NpyLatentDataset', 'PackedLatentDataset', 'SyntheticShapesDataset', 'SHAPE_CLASSES', 'ImageFolderDataset', 'LatentStore',
    'LatentStoreWriter', 'center_crop_arr', 'scan_image_folder', 'load_image',
    'image_to_tensor', 'list_npy_pairs', 'IMG_EXTENSIONS', 'WorkerRNGMixin',
    'draw_seed', 'natural_sort_key'
]
