"""The data tools as the dataset tests run them: tools/extract_features.py and
tools/convert_fastdit_features.py one module object each, shared by every test (tests
patch its attributes); tools/make_manifest.py loaded afresh for each run; the fast-DiT
feature folders that convert_fastdit_features.py reads."""
import glob
import os
import os.path as osp
from unittest import mock

import numpy as np
import pytest

from mmsora.datasets import LatentStoreWriter
from tests.cli_helpers import load_tool

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


extract = load_tool('extract_features')
convert = load_tool('convert_fastdit_features')


def run_extract(data, out, vae, *extra):
    """extract_features.py on an image folder at 16x16, shards of 2, batches of 3, CPU."""
    return extract.main(['--data-path', data, '--out', out, '--vae', vae, '--image-size',
                         '16', '--shard-size', '2', '--batch-size', '3', '--num-workers',
                         '0', '--device', 'cpu', *extra])


def write_fastdit_features(tmp_path, count=11):
    """``count`` fast-DiT items (1, 4, 4, 4) with labels in ``f/`` and ``l/``."""
    feats, labels = tmp_path / 'f', tmp_path / 'l'
    feats.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        np.save(feats / f'{i}.npy', rng.standard_normal((1, 4, 4, 4)).astype(np.float32))
        np.save(labels / f'{i}.npy', np.array([i % 4]))
    return feats, labels


def run_convert(features, out, dtype='float32'):
    """convert_fastdit_features.py on ``features`` (the two folders of
    :func:`write_fastdit_features`) into ``out`` in ``dtype``, shards of 4."""
    feats, labels = features
    return convert.main(['--features-dir', str(feats), '--labels-dir', str(labels),
                         '--out', str(out), '--dtype', dtype, '--shard-size', '4'])


def make_manifest_tool():
    """tools/make_manifest.py as a fresh module."""
    return load_tool('make_manifest')


def run_make_manifest(capsys, *argv):
    """``make_manifest.main(argv)`` with one worker: (its summary dict, what it printed)."""
    summary = make_manifest_tool().main([str(a) for a in argv] + ['--workers', '1'])
    return summary, capsys.readouterr().out


def shard_mtimes(out):
    """The modification times of a store's .npy shards, by path."""
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(osp.join(out, '*.npy'))}


def interrupted(run, after=1):
    """Run ``run()`` until its shard number ``after + 1`` is about to be written."""
    real_write, calls = LatentStoreWriter.write_shard, []

    def crash(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) > after:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    with mock.patch.object(LatentStoreWriter, 'write_shard', crash):
        with pytest.raises(KeyboardInterrupt):
            run()
