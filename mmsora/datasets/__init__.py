"""Datasets: latent stores (packed shards, fast-DiT .npy files), image folders, video
manifests and their transforms, and the demo's synthetic shapes."""
from .image_folder import (IMG_EXTENSIONS, ImageFolderDataset, center_crop_arr,
                           image_to_tensor, load_image, scan_image_folder)
from .latent_store import LatentStore
from .latent_store_writer import LatentStoreWriter
from .manifest import MANIFEST_COLUMNS, ManifestError, load_manifest, write_manifest
from .npy_latent_dataset import NpyLatentDataset, list_npy_pairs
from .packed_latent_dataset import PackedLatentDataset
from .skip_corrupt import SkipCorruptDataset
from .synthetic_shapes import (SHAPE_CLASSES, SyntheticMovingShapesDataset,
                               SyntheticShapesDataset)
from .transforms import *  # noqa: F401,F403
from .utils import WorkerRNGMixin, draw_seed, natural_sort_key
from .video_dataset import VideoDataset

__all__ = [
    'NpyLatentDataset', 'PackedLatentDataset', 'SyntheticShapesDataset', 'SHAPE_CLASSES',
    'SyntheticMovingShapesDataset',
    'ImageFolderDataset', 'LatentStore',
    'LatentStoreWriter', 'center_crop_arr', 'scan_image_folder', 'load_image',
    'image_to_tensor', 'list_npy_pairs', 'IMG_EXTENSIONS', 'WorkerRNGMixin',
    'draw_seed', 'natural_sort_key', 'load_manifest', 'write_manifest', 'ManifestError',
    'MANIFEST_COLUMNS', 'VideoDataset', 'SkipCorruptDataset'
]
