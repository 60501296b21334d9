"""SampleMetric: the base of metrics on generated samples (FID, IS, FVD, CLIP score).

mmengine's ``BaseMetric`` collects ``self.results`` from all ranks and calls
``compute_metrics`` on the main one. Each of our results is one sample's features
under its global sample index; ``compute_metrics`` sorts by that index, so the value
does not depend on how many processes drew the samples or in what order.
"""
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from mmsora.registry import MODELS

__all__ = ['SampleMetric', 'config_arguments', 'to_channels_first', 'stack_results']


def to_channels_first(samples: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (N, T, H, W, 3) -> (N, 3, H, W) or (N, 3, T, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(samples))
    if x.dtype != torch.uint8 or x.dim() not in (4, 5) or x.shape[-1] != 3:
        raise ValueError('samples must be uint8 (N, H, W, 3) pictures or (N, T, H, W, 3) '
                         f'clips, got {x.dtype} {tuple(x.shape)}')
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x.permute(0, 4, 1, 2, 3)


def stack_results(results: List[dict]) -> Dict[str, np.ndarray]:
    """Per-sample results -> arrays in sample-index order (duplicates refused)."""
    results = sorted(results, key=lambda r: r['index'])
    indices = [r['index'] for r in results]
    if len(set(indices)) != len(indices):
        raise ValueError('a sample index was evaluated twice; every index must be drawn '
                         'by exactly one process')
    return {key: np.stack([r[key] for r in results]) for key in results[0]}


def config_arguments(cls: type) -> tuple:
    """``(names, complete)``: the arguments ``cls`` takes by name, following
    ``**kwargs`` down the bases' ``__init__`` where they go there (a metric passes them
    on to :class:`SampleMetric`), and whether that is all of them: the names of
    :func:`mmsora.utils.config_keys.accepted_arguments`, the one walk of them."""
    from mmsora.utils.config_keys import accepted_arguments
    found, complete = accepted_arguments(cls)
    return list(found), complete


class SampleMetric(BaseMetric):
    """Features of generated samples, one result per sample index.

    ``process(data_batch, data_samples)`` takes ``data_samples``: one dict per sample
    with ``index`` (int, its global index), ``sample`` (uint8 (H, W, 3) picture or
    (T, H, W, 3) clip), and ``label`` / ``prompt`` when the model has them.

    Args:
        extractor (dict): Config of the feature network (``MODELS`` registry), built
            on first use.
        device (str, optional): Where the extractor runs; default CUDA when there is
            one, else CPU.
        batch_size (int): Most samples through the extractor at once.
        collect_device, prefix, collect_dir: As mmengine's ``BaseMetric``.
    """

    # Results are named 'FID', 'IS', ... without a prefix unless one is given.
    default_prefix = ''
    # The keys compute_metrics returns (before the prefix); see result_names.
    result_keys: tuple = ()

    def __init__(self, extractor: dict, device: Optional[str] = None, batch_size: int = 64,
                 collect_device: str = 'cpu', prefix: Optional[str] = None,
                 collect_dir: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.extractor_cfg = dict(extractor)
        self.device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
        self.batch_size = batch_size
        self._extractor = None
        # where the config sits (metrics[0]), for messages; set by build_evaluator
        self.config_path: Optional[str] = None

    def check_inputs(self, num_samples: Optional[int] = None,
                     sample_size: Optional[tuple] = None) -> None:
        """Raise now for the extractor's config (a key it does not take; no weights
        where the network needs them) and for a file the metric will read (the
        extractor's ``weights`` / ``pretrained_path``: missing, or of the wrong kind
        where a header shows it), before hours of sampling; the extractor itself is
        built on first use. ``num_samples`` and ``sample_size`` (what the model will
        make) are for subclasses."""
        import os.path as osp
        for key in ('weights', 'pretrained_path'):
            path = self.extractor_cfg.get(key)
            if isinstance(path, str) and not osp.exists(path):
                raise FileNotFoundError(f'{type(self).__name__}: the extractor '
                                        f"{self.extractor_cfg.get('type')}'s {key} not "
                                        f'found: {path}')
        extractor_type = self.extractor_cfg.get('type')
        cls = MODELS.get(extractor_type) if isinstance(extractor_type, str) else extractor_type
        if isinstance(cls, type):
            self._check_extractor_cfg(cls)
        # the extractor's file or folder checked before anything is sampled (a T5
        # folder as CLIP's was refused only once the first batch had been drawn)
        for key, method in (('weights', 'check_weights'),
                            ('pretrained_path', 'check_pretrained_path')):
            check = getattr(cls, method, None)
            if check is not None and isinstance(self.extractor_cfg.get(key), str):
                check(self.extractor_cfg[key])

    def _check_extractor_cfg(self, cls: type) -> None:
        """A key the extractor does not take (``weigths``), and no weights for a
        network that needs them (``weights_arg``): an Inception without weights was
        built random and scored 'FID: 0.0000' (IS 1.0) without a word."""
        name = type(self).__name__
        names, complete = config_arguments(cls)
        for key in self.extractor_cfg:
            if complete and key not in ('type', '_scope_') and key not in names:
                from mmsora.utils.error_messages import unknown_key_message
                raise ValueError(f'{self.config_key("extractor")} of {name}: '
                                 + unknown_key_message(cls.__name__, key, names=list(names)))
        key = getattr(cls, 'weights_arg', None)
        if key is None or self.extractor_cfg.get(key) is not None:
            return
        if self.extractor_cfg.get('random_weights') is True:
            print_log(f'{name}: its extractor {cls.__name__} has random weights '
                      '(random_weights=True, for tests): the values are not comparable '
                      'with anything', logger='current', level=logging.WARNING)
            return
        raise ValueError(f'{self.config_key("extractor." + key)}: {name}\'s extractor '
                         f'{cls.__name__} has no {key} (a random network\'s values mean '
                         f'nothing): give {getattr(cls, "weights_file", "its local file")}')

    def config_key(self, key: str) -> str:
        """``metrics[0].extractor.weights``: where ``key`` of this metric's config is
        (``config_path`` is set by :func:`mmsora.apis.build_evaluator`)."""
        return f'{self.config_path}.{key}' if self.config_path else key

    def prepare(self) -> None:
        """Read or compute what the metric needs besides the samples (a Frechet
        metric's reference statistics), before the sampling: a failure there came
        after all of it."""

    def result_names(self) -> list:
        """The names this metric's results get in the evaluator's output (prefix
        included): two metrics giving the same name made mmengine fail only after
        all the sampling ('multiple evaluation results with the same metric name'),
        so :func:`mmsora.apis.build_evaluator` compares them first."""
        return [f'{self.prefix}/{key}' if self.prefix else key for key in self.result_keys]

    @property
    def extractor(self) -> torch.nn.Module:
        if self._extractor is None:
            self._extractor = MODELS.build(self.extractor_cfg).to(self.device).eval()
        return self._extractor

    def features(self, samples: np.ndarray) -> Dict[str, np.ndarray]:
        """The extractor's outputs for uint8 samples (N, ..., 3), batch by batch."""
        x = to_channels_first(samples)
        outs: Dict[str, list] = {}
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                for key, value in self.extractor(x[start:start + self.batch_size]).items():
                    outs.setdefault(key, []).append(value.float().cpu().numpy())
        return {key: np.concatenate(value) for key, value in outs.items()}

    def sample_results(self, data_samples: Sequence[dict]) -> Dict[str, np.ndarray]:
        """Per-sample arrays to keep (N, ...); by default the extractor's outputs."""
        return self.features(np.stack([s['sample'] for s in data_samples]))

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        if not len(data_samples):
            return
        outs = self.sample_results(data_samples)
        for k, sample in enumerate(data_samples):
            self.results.append(dict(index=int(sample['index']),
                                     **{key: value[k] for key, value in outs.items()}))
