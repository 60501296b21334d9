"""FID (Heusel et al. 2017) and FVD (Unterthiner et al. 2018): the Frechet distance
between Gaussians fitted to features of generated and reference samples."""
import logging
import os
import os.path as osp
import struct
import zipfile
from typing import Dict, List, Optional

import numpy as np
from mmengine.logging import print_log
from tqdm import tqdm

from mmsora.registry import METRICS
from mmsora.utils.cli import UserPathNotFound, first_line

from ..functional import (feature_stats, frechet_distance, inception_score, load_stats,
                          save_stats)
from .base import SampleMetric, stack_results

__all__ = ['FID', 'FVD']

# What reading a statistics cache file may raise: missing, not an .npz, cut short, or
# without its arrays.
_CACHE_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class FrechetMetric(SampleMetric):
    """Frechet distance to a reference set.

    Args:
        extractor (dict): Feature network config (see subclasses).
        reference (str): ``.npz`` holding either feature statistics (``mu``,
            ``sigma``: the ADM evaluator's reference batches have them, and so do our
            caches) or the reference samples themselves as ``arr_0`` (uint8 NHWC
            pictures or (N, T, H, W, 3) clips, the ADM layout). Samples are turned into
            statistics once and cached.
        reference_cache (str, optional): Where the cached statistics go; default
            ``{reference without .npz}_{extractor type}_stats.npz``.
        **kwargs: See :class:`SampleMetric`.
    """

    metric_name = ''
    sample_ndim = 4  # (H, W, 3) pictures -> (N, H, W, 3)

    def __init__(self, extractor: dict, reference: str,
                 reference_cache: Optional[str] = None, **kwargs):
        super().__init__(extractor, **kwargs)
        self.reference = reference
        self.reference_cache = reference_cache or (
            f'{osp.splitext(reference)[0]}_{self.extractor_cfg["type"]}_stats.npz')

    @property
    def result_keys(self) -> tuple:
        return (self.metric_name,)

    def check_inputs(self, num_samples: Optional[int] = None,
                     sample_size: Optional[tuple] = None) -> None:
        """Also what the reference holds, from its arrays' headers (nothing is read
        whole): statistics, or at least 2 samples of the kind this metric takes and
        of ``sample_size`` (the model's (H, W) or (T, H, W); None: unknown)."""
        super().check_inputs(num_samples, sample_size)
        if num_samples is not None and num_samples < 2:
            raise ValueError(f'{self.metric_name} needs at least 2 samples (a covariance), '
                             f'got num_samples={num_samples}: raise --num-samples '
                             '(evaluation.num_samples)')
        if not osp.isfile(self.reference):
            raise UserPathNotFound(f'{self.metric_name} reference not found: {self.reference}')
        self._reference_shapes = shapes = _npz_shapes(self.reference)
        if 'mu' in shapes and 'sigma' in shapes:
            mu, sigma = shapes['mu'][0], shapes['sigma'][0]
            if len(mu) != 1 or sigma != (mu[0], mu[0]):
                raise ValueError(f'{self.reference}: mu {shapes["mu"][0]} and sigma {sigma} '
                                 'are not the statistics of one feature space')
        elif 'arr_0' in shapes:
            self._check_reference_samples(*shapes['arr_0'])
            self._check_size(shapes['arr_0'][0][1:-1], sample_size, 'the samples are')
            self._warn_unwritable_cache()
        else:
            raise ValueError(_no_reference_arrays(self.reference, shapes))

    def _warn_unwritable_cache(self) -> None:
        """Say before the sampling when the statistics cannot be cached: the metric
        still works (they are computed from the reference on each run), but a cache
        write that failed after the sampling used to end the run without its value."""
        why = _unwritable_reason(self.reference_cache)
        if why is not None and not self._cache_is_current():
            print_log(f'{self.metric_name}: the reference statistics cannot be cached at '
                      f'{self.reference_cache} ({why}): they will be computed from '
                      f'{self.reference} on every run; set reference_cache to a writable '
                      'path to keep them', logger='current', level=logging.WARNING)

    def _check_reference_samples(self, shape: tuple, dtype) -> None:
        """Reference samples of this metric's kind, and at least 2 of them."""
        if len(shape) != self.sample_ndim or shape[-1] != 3 or dtype != np.uint8:
            raise ValueError(f'{self.reference}: arr_0 is {dtype} {shape}, but '
                             f'{self.metric_name} takes a reference of uint8 '
                             f'{self._kind()} (tools/make_reference.py makes one)')
        if shape[0] < 2:
            raise ValueError(f'{self.reference} holds {shape[0]} sample(s); '
                             f'{self.metric_name} needs at least 2 (a covariance): make '
                             'the reference from more pictures or clips')

    def _check_size(self, reference: tuple, samples: Optional[tuple], whose: str) -> None:
        """Refuse reference samples of another (T,) H, W than the samples; a None
        in ``samples`` is a size not known yet."""
        if samples is not None and len(samples) != len(reference):
            raise ValueError(f'{self.metric_name} takes {self._kind()}, but {whose} '
                             f'{"clips" if len(samples) == 3 else "pictures"}')
        if samples is None or all(s is None or s == r for s, r in zip(samples, reference)):
            return
        frames = samples[0] if len(samples) == 3 else None
        fix = (f'--num-frames {frames} ' if frames else '') + f'--image-size {samples[-1]}'
        square = samples[-1] == samples[-2] is not None
        raise ValueError(
            f'{self.reference} holds {_size_text(reference)} {self._noun()}, but {whose} '
            f'{_size_text(samples)} ones: make the reference at that size'
            + (f' (tools/make_reference.py {fix})' if square else ''))

    def _noun(self) -> str:
        return 'pictures' if self.sample_ndim == 4 else 'clips'

    def _kind(self) -> str:
        return 'pictures (N, H, W, 3)' if self.sample_ndim == 4 else 'clips (N, T, H, W, 3)'

    def sample_results(self, data_samples):
        samples = np.stack([s['sample'] for s in data_samples])
        if samples.ndim != self.sample_ndim:
            raise ValueError(f'{self.metric_name} takes {self._kind()}; got samples of shape '
                             f'{samples.shape}')
        shapes = self._shapes()
        # the first batch: reference samples of another size? (Not where the file has
        # mu / sigma beside arr_0, as ADM's VIRTUAL_*.npz: only the statistics are used.)
        if not self.results and not ('mu' in shapes and 'sigma' in shapes):
            shape = shapes.get('arr_0', ((None,) * self.sample_ndim, None))[0]
            if None not in shape and len(shape) == self.sample_ndim:
                self._check_size(shape[1:-1], samples.shape[1:-1], 'the samples are')
        out = self.features(samples)
        if not self.results:  # stored statistics of another extractor?
            dim = self._shapes().get('mu', ((None,), None))[0][0]
            if dim is not None and dim != out['features'].shape[1]:
                raise ValueError(
                    f'{self.reference} holds statistics of {dim} features, but the '
                    f"{self.extractor_cfg['type']} extractor gives "
                    f"{out['features'].shape[1]}: they come from another extractor")
        return out

    def _shapes(self) -> Dict[str, tuple]:
        """The reference's array headers (as check_inputs read them)."""
        if getattr(self, '_reference_shapes', None) is None:
            self._reference_shapes = (_npz_shapes(self.reference)
                                      if osp.isfile(self.reference) else {})
        return self._reference_shapes

    def prepare(self) -> None:
        """The reference statistics now, before the sampling (read, from the cache, or
        computed and cached): they were computed in ``compute_metrics``, after all of
        it, where a reference that could not be read (or a 9.8 GB compressed one,
        out of memory) lost the samples of an evaluation run without ``--out``."""
        self._prepared_stats = self.reference_stats()

    def reference_stats(self) -> Dict[str, np.ndarray]:
        """The reference's ``mu``/``sigma``: stored, cached, or computed now and cached."""
        if not osp.isfile(self.reference):
            raise UserPathNotFound(f'{self.metric_name} reference not found: {self.reference}')
        with np.load(self.reference) as data:  # (members are read only when named)
            if 'mu' in data and 'sigma' in data:
                return dict(mu=data['mu'], sigma=data['sigma'])
            if 'arr_0' not in data:
                raise ValueError(_no_reference_arrays(self.reference, data.files))
        tag = self._cache_tag()
        cached = self._read_cache(tag)
        if cached is not None:
            return cached
        samples = npz_array(self.reference, 'arr_0')  # memory-mapped where it can be
        chunk = self.batch_size * 16
        # each chunk read into a writable copy (torch warns on a read-only memmap)
        features = [self.features(np.array(samples[i:i + chunk]))['features']
                    for i in tqdm(range(0, len(samples), chunk),
                                  desc=f'{self.metric_name} reference features')]
        mu, sigma = feature_stats(np.concatenate(features))
        try:
            save_stats(self.reference_cache, mu, sigma, extractor=tag,
                       num_samples=len(samples))
        except OSError as e:  # the statistics are in memory: the metric can still be given
            print_log(f'{self.metric_name}: cannot cache the reference statistics in '
                      f'{self.reference_cache} ({first_line(e)[:200]}); the metric is computed '
                      'without the cache, and the next run computes them again: set '
                      'reference_cache to a writable path', logger='current',
                      level=logging.WARNING)
        else:
            print_log(f'{self.metric_name}: reference statistics of {len(samples)} samples '
                      f'cached in {self.reference_cache}', logger='current')
        return dict(mu=mu, sigma=sigma)

    def _cache_tag(self) -> str:
        """What the cache holds for: this extractor (its settings, and its weights
        file as it is now) and this reference file as it is now, so that a
        regenerated reference or replaced weights at the same path are read afresh."""
        files = [self.reference] + [v for v in self.extractor_cfg.values()
                                    if isinstance(v, str) and osp.isfile(v)]
        return repr((sorted(self.extractor_cfg.items()), [_file_stamp(f) for f in files]))

    def _cached_tag(self) -> str:
        """The tag the cache file was written for (:meth:`_cache_tag`); raises
        :data:`_CACHE_ERRORS` where it cannot be read."""
        with np.load(self.reference_cache) as cached:
            return str(cached.get('extractor', ''))

    def _cache_is_current(self) -> bool:
        """Whether a cache for this extractor and reference is there already (one
        made beforehand in a read-only data folder needs no writing)."""
        try:
            return self._cached_tag() == self._cache_tag()
        except _CACHE_ERRORS:
            return False

    def _read_cache(self, tag: str) -> Optional[Dict[str, np.ndarray]]:
        """The cached statistics if they are for ``tag``; None if there are none, if
        they are stale, or if the file cannot be read (said in one warning line)."""
        if not osp.isfile(self.reference_cache):
            return None
        try:
            if self._cached_tag() != tag:
                return None
            return load_stats(self.reference_cache)
        except _CACHE_ERRORS as e:
            print_log(f'{self.metric_name}: cannot read the cached reference statistics '
                      f'{self.reference_cache} ({first_line(e)[:200]}); computing them again',
                      logger='current', level=logging.WARNING)
            return None

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        arrays = stack_results(results)
        n, dim = arrays['features'].shape
        if n <= dim:  # a smoke test's count: scipy's 'singular matrix' said it obliquely
            print_log(f'{self.metric_name} of {n} samples in {dim} feature dimensions: '
                      'their covariance is singular (rank < dim), and the value is far from '
                      'the one at the protocol\'s count (FID-50K, FVD-2048): compare it '
                      'only with runs of the same count', logger='current',
                      level=logging.WARNING)
        shapes = self._shapes()
        count = shapes['arr_0'][0][0] if 'arr_0' in shapes and 'mu' not in shapes else None
        if count is not None and count <= dim:  # the reference's own statistics too
            print_log(f'{self.metric_name}: the reference {self.reference} holds {count} '
                      f'samples in {dim} feature dimensions: its covariance is singular '
                      '(rank < dim), and the value is far from the one against the '
                      'protocol\'s reference (50,000 pictures for FID-50K, 2,048 clips for '
                      'FVD): compare it only with runs against the same reference',
                      logger='current', level=logging.WARNING)
        mu, sigma = feature_stats(arrays['features'])
        # those of prepare() (before the sampling), once; else read or computed now
        ref, self._prepared_stats = getattr(self, '_prepared_stats', None), None
        ref = ref or self.reference_stats()
        return {self.metric_name: frechet_distance(mu, sigma, ref['mu'], ref['sigma'])}


@METRICS.register_module()
class FID(FrechetMetric):
    """Frechet Inception Distance of generated pictures.

    Args:
        extractor (dict): Default ``dict(type='InceptionV3FID', weights=...)``; give
            the local weights file.
        reference (str): See :class:`FrechetMetric`; for ImageNet 256 the ADM
            evaluator's ``VIRTUAL_imagenet256_labeled.npz`` (DiT's and SiT's
            reference).
        inception_score (bool): Also report ``IS`` (and ``IS_std``) from the same
            Inception pass. Defaults to False.
        split_size (int): Samples per Inception Score split (ADM: 5000).
    """

    metric_name = 'FID'

    def __init__(self, extractor: dict, reference: str, inception_score: bool = False,
                 split_size: int = 5000, **kwargs):
        super().__init__(extractor, reference, **kwargs)
        self.inception_score = inception_score
        self.split_size = split_size

    @property
    def result_keys(self) -> tuple:
        return ('FID', 'IS', 'IS_std') if self.inception_score else ('FID',)

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.inception_score:
            mean, std = inception_score(stack_results(results)['logits'], self.split_size)
            metrics.update(IS=mean, IS_std=std)
        return metrics


@METRICS.register_module()
class FVD(FrechetMetric):
    """Frechet Video Distance of generated clips (I3D features).

    Args:
        extractor (dict): ``dict(type='I3DTorchScript', weights=...)``.
        reference (str): See :class:`FrechetMetric`; reference clips (N, T, H, W, 3)
            with as many frames as the samples (16 in Latte's UCF-101 protocol).
    """

    metric_name = 'FVD'
    sample_ndim = 5


def _unwritable_reason(path: str) -> Optional[str]:
    """Why a file cannot be written at ``path`` (its folder is under a file, or the
    nearest existing folder is not writable), or None when it can be, as far as the
    file system tells before trying."""
    folder = osp.dirname(osp.abspath(path))
    existing = folder
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        return f'{existing} is a file, not a folder'
    if not os.access(existing, os.W_OK | os.X_OK):
        return f'{existing} is not writable'
    if osp.isdir(path):
        return 'a folder of that name is in the way'
    return None


def npz_array(path: str, name: str) -> np.ndarray:
    """Array ``name`` of an ``.npz``, memory-mapped (read-only) when it is stored
    uncompressed, as tools/make_reference.py, mass sampling and ADM's reference
    batches store it: ``np.load(mmap_mode='r')`` ignores mmap_mode for ``.npz`` files
    and reads the array whole (30 GB for the clips of a large FVD reference, on the
    one process that computes the statistics). A compressed (``np.savez_compressed``)
    or otherwise unmappable member is read whole, as ``np.load`` does."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(f'{name}.npy')
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:  # not encrypted
        with open(path, 'rb') as f:
            # the data follows the member's LOCAL header, whose name and extra field
            # lengths may differ from the central directory's
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) == 30 and local[:4] == b'PK\x03\x04':
                name_len, extra_len = struct.unpack('<HH', local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(f)
                read = {(1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read is not None:
                    shape, fortran, dtype = read(f)
                    if not dtype.hasobject and shape and 0 not in shape:
                        return np.memmap(path, dtype=dtype, mode='r', offset=f.tell(),
                                         shape=shape, order='F' if fortran else 'C')
    with np.load(path) as data:
        return data[name]


def _no_reference_arrays(path: str, names) -> str:
    return (f'{path} has neither statistics (mu, sigma) nor samples (arr_0); it has '
            f'{sorted(names)}: save the samples as arr_0 (tools/make_reference.py does)')


def _size_text(size: tuple) -> str:
    """(H, W) -> '16x16'; (T, H, W) -> '4-frame 16x16'; None: not known."""
    text = f'{size[-2] or "?"}x{size[-1] or "?"}'
    return f'{size[0]}-frame {text}' if len(size) == 3 and size[0] else text


def _file_stamp(path: str) -> tuple:
    """Size, modification time and a hash of the first and last 64 KiB of a file: a
    zip (.npz, .pth) keeps its entries' checksums there, so new content shows even
    where the clock is coarse. Cheap for files of any size."""
    import hashlib
    size = osp.getsize(path)
    with open(path, 'rb') as f:
        head = f.read(1 << 16)
        f.seek(max(size - (1 << 16), 0))
        tail = f.read()
    return size, os.stat(path).st_mtime_ns, hashlib.sha1(head + tail).hexdigest()


def _npz_shapes(path: str) -> Dict[str, tuple]:
    """``{name: (shape, dtype)}`` of the arrays in an ``.npz``, from their headers."""
    shapes = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith('.npy'):
                    continue
                with archive.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                shapes[name[:-len('.npy')]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ValueError(f'cannot read the reference {path}: not an .npz archive of numpy '
                         f'arrays ({e})') from None
    return shapes
