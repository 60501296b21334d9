"""Extraction settings a store records (--pad, --store samples' --seed), an --out that
cannot be written refused before any model loads, and the lock of
tools/convert_fastdit_features.py (walk-through W1)."""
import json
import os
import socket
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
import pytest
import torch

from mmsora.datasets import write_manifest
from mmsora.datasets.store_lock import LOCK_NAME
from mmsora.utils.cli import UserError
from tests.extract_tools import convert, extract, interrupted, run_convert, run_extract
from tests.shared_videos import BIKES, BUNNY, needs_videos

pytestmark = pytest.mark.usefixtures('kept_environ')


def no_models():
    """Patches that fail the test if the VAE or the text encoder is loaded."""
    return (mock.patch.object(extract, 'build_vae', side_effect=AssertionError('VAE loaded')),
            mock.patch.object(extract, 'build_text_encoder',
                              side_effect=AssertionError('text encoder loaded')))


def index_meta(out):
    with open(os.path.join(out, 'index.json')) as f:
        return json.load(f)['meta']


def shard_files(out):
    """``{name: bytes}`` of a store's .npy files."""
    return {name: open(os.path.join(out, name), 'rb').read()
            for name in sorted(os.listdir(out)) if name.endswith('.npy')}


# --------------------------------------------------------------------------- #
#                                   --pad                                      #
# --------------------------------------------------------------------------- #
@pytest.fixture
def short_manifest(tmp_path):
    """Big Buck Bunny (132 frames: too short for 2 frames at stride 140) and bikes."""
    manifest = str(tmp_path / 'clips.csv')
    write_manifest([dict(path=BUNNY), dict(path=BIKES)], manifest)
    return manifest


def extract_clips(manifest, out, vae, *extra):
    return extract.main(['--manifest', manifest, '--out', str(out), '--vae', vae,
                         '--num-frames', '2', '--frame-stride', '140', '--size', '16',
                         '--shard-size', '1', '--batch-size', '1', '--num-workers', '0',
                         '--device', 'cpu', '--dtype', 'float32', *extra])


PAD_REFUSED = (r"written with pad=None \(in \S+\); this run has pad='loop': use "
               r'another output folder or the same settings \(set by --pad\)$')


@needs_videos
def test_pad_is_recorded_and_another_is_refused(short_manifest, tiny_vae_dir, tmp_path,
                                                capsys):
    """A run advised '--pad loop' for a short clip; following it into the same --out
    said 'complete ... nothing to do' and advised it again, and into a begun store
    padded the short clips of its other shards only."""
    out = tmp_path / 'store'
    summary = extract_clips(short_manifest, out, tiny_vae_dir)
    assert summary['complete'] and summary['num_items'] == 1
    advice = 'or --pad loop (or repeat_last), into another --out)'
    assert advice in capsys.readouterr().out
    assert 'pad' not in index_meta(out)  # (as a store of an older mmsora: no --pad)
    before = shard_files(out)
    vae, text = no_models()
    with vae, text, pytest.raises(UserError, match=PAD_REFUSED):
        extract_clips(short_manifest, out, tiny_vae_dir, '--pad', 'loop')
    assert shard_files(out) == before
    assert extract_clips(short_manifest, out, tiny_vae_dir)['shards_written'] == 0
    said = capsys.readouterr().out
    assert 'is complete (1 item in 2 shards): nothing to do' in said
    assert advice in said and 'or --pad loop (or repeat_last))' not in said

    # a store begun and stopped is not resumed with padding
    begun = tmp_path / 'begun'
    interrupted(lambda: extract_clips(short_manifest, begun, tiny_vae_dir), after=1)
    with vae, text, pytest.raises(UserError, match=PAD_REFUSED):
        extract_clips(short_manifest, begun, tiny_vae_dir, '--pad', 'loop')

    # a padded store records it: a rerun without --pad (or another one) is refused
    padded = tmp_path / 'padded'
    assert extract_clips(short_manifest, padded, tiny_vae_dir, '--pad', 'loop')[
        'num_items'] == 2
    assert index_meta(padded)['pad'] == 'loop'
    with vae, text, pytest.raises(UserError, match=r"written with pad='loop' .*; this run "
                                  r'has pad=None: .*\(set by --pad\)$'):
        extract_clips(short_manifest, padded, tiny_vae_dir)
    with vae, text, pytest.raises(UserError, match=r"this run has pad='repeat_last'"):
        extract_clips(short_manifest, padded, tiny_vae_dir, '--pad', 'repeat_last')
    assert extract_clips(short_manifest, padded, tiny_vae_dir, '--pad', 'loop')[
        'shards_written'] == 0


# --------------------------------------------------------------------------- #
#                          --store samples --seed                              #
# --------------------------------------------------------------------------- #
def test_the_seed_of_a_samples_store_is_recorded(image_folder, tiny_vae_dir, tmp_path):
    """A resume with another --seed mixed the noise of two seeds in one store."""
    out = str(tmp_path / 'samples')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir, '--store', 'samples',
                                    '--seed', '7'))
    vae, text = no_models()
    for seed, given in (('8', ['--seed', '8']), ('0', [])):
        with vae, text, pytest.raises(UserError, match=(
                rf'written with seed=7 \(in parts/rank-00000.json\); this run has '
                rf'seed={seed}: use another output folder or the same settings '
                r'\(set by --seed\)$')):
            run_extract(image_folder, out, tiny_vae_dir, '--store', 'samples', *given)
    assert run_extract(image_folder, out, tiny_vae_dir, '--store', 'samples', '--seed',
                       '7')['complete']
    assert index_meta(out)['seed'] == 7
    # the default seed is not recorded (as in a store of an older mmsora): it is seed 0
    default = str(tmp_path / 'default')
    assert run_extract(image_folder, default, tiny_vae_dir, '--store', 'samples')['complete']
    assert 'seed' not in index_meta(default)
    with vae, text, pytest.raises(UserError, match=r'written with seed=0 \(in index.json\); '
                                  r'this run has seed=3: .*\(set by --seed\)$'):
        run_extract(image_folder, default, tiny_vae_dir, '--store', 'samples', '--seed', '3')
    # moments draw no noise at extraction: their --seed is not theirs to record
    moments = str(tmp_path / 'moments')
    assert run_extract(image_folder, moments, tiny_vae_dir, '--seed', '5')['complete']
    assert 'seed' not in index_meta(moments)
    assert run_extract(image_folder, moments, tiny_vae_dir)['shards_written'] == 0


# --------------------------------------------------------------------------- #
#                         an --out that cannot be written                      #
# --------------------------------------------------------------------------- #
@pytest.fixture
def read_only(monkeypatch):
    """Makes a folder one this process may not write in (mode 555; root passes over
    modes, so for root the probe of check_output_path is refused as the system would),
    until the test ends."""
    folders = []

    def make(folder):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        folders.append(folder)
        return folder
    if os.geteuid() == 0:
        real = tempfile.TemporaryFile

        def refused(*args, dir=None, **kwargs):
            if dir is not None and any(os.path.abspath(dir).startswith(str(folder))
                                       for folder in folders):
                raise PermissionError(13, 'Permission denied')
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(tempfile, 'TemporaryFile', refused)
    yield make
    for folder in folders:
        folder.chmod(0o755)


def test_an_out_that_cannot_be_written_is_refused_before_the_models_load(
        image_folder, tiny_vae_dir, tmp_path, read_only):
    """It was named after the VAE (and text encoder) loaded, in a bare '[Errno 13]
    Permission denied' line."""
    folder = read_only(tmp_path / 'ro')
    vae, text = no_models()
    out = folder / 'store'
    with vae, text, pytest.raises(UserError) as info:
        run_extract(image_folder, str(out), tiny_vae_dir)
    assert str(info.value) == f'--out {out}: cannot write in {folder} (Permission denied)'
    assert not out.exists()


def test_a_complete_store_in_a_read_only_folder_is_only_read(image_folder, tiny_vae_dir,
                                                             tmp_path, read_only):
    out = tmp_path / 'store'
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    read_only(out)
    assert run_extract(image_folder, str(out), tiny_vae_dir)['shards_written'] == 0


# --------------------------------------------------------------------------- #
#                      convert_fastdit_features.py's lock                      #
# --------------------------------------------------------------------------- #
def write_lock(root, pid, host=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_NAME).write_text(json.dumps(dict(
        pid=pid, host=host or socket.gethostname(), started=None,
        since='2026-12-07 01:00:00 UTC')))


def test_a_second_conversion_into_one_out_is_refused(fastdit_features, tmp_path, capsys):
    """Two conversions into one --out both wrote every shard."""
    out = tmp_path / 'store'
    write_lock(out, os.getpid())  # (a running process: this one)
    with pytest.raises(UserError) as info:
        run_convert(fastdit_features, out)
    assert str(info.value) == (
        f'--out {out} is being written by another run (pid {os.getpid()}, since '
        '2026-12-07 01:00:00 UTC): let it finish (or stop it), then rerun to go on; each '
        'shard is written once')
    assert os.listdir(out) == [LOCK_NAME]  # (left to its holder)

    # held while the shards are written, and gone when the run ends
    real_write, held = convert.LatentStoreWriter.write_shard, []

    def write(self, *args, **kwargs):
        with open(out / LOCK_NAME) as f:
            held.append(json.load(f)['pid'])
        return real_write(self, *args, **kwargs)

    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()  # (a pid whose process has ended)
    write_lock(out, child.pid)
    with mock.patch.object(convert.LatentStoreWriter, 'write_shard', write):
        assert run_convert(fastdit_features, out)['complete']
    assert held == [os.getpid()] * 3
    assert (f'note: {out}: taking over the lock of a run that stopped (pid {child.pid} is '
            'gone): its finished shards are kept') in capsys.readouterr().err
    assert LOCK_NAME not in os.listdir(out)


def test_a_conversion_into_a_folder_it_cannot_write_is_refused_naming_out(
        fastdit_features, tmp_path, read_only):
    folder = read_only(tmp_path / 'ro')
    with pytest.raises(UserError) as info:
        run_convert(fastdit_features, folder / 'store')
    assert str(info.value) == (f'--out {folder / "store"}: cannot write in {folder} '
                               '(Permission denied)')


# --------------------------------------------------------------------------- #
#                          --text-encoder-dtype                                #
# --------------------------------------------------------------------------- #
def test_the_text_encoder_dtype_is_used_and_recorded(image_folder, tiny_vae_dir, tmp_path,
                                                     t5_dir):
    """T5-XXL in float32 is 17.7 GiB of weights: --text-encoder-dtype bfloat16 loads it in
    half that (as PixArt and Open-Sora do). A resume with another dtype would mix the
    embeddings of two encoders in one store."""
    from mmsora.datasets import LatentStore
    loaded = []
    real = extract.build_text_encoder

    def build_text_encoder(args):
        enc = real(args)
        loaded.append(enc.encoder.dtype)
        return enc

    base = ('--text-encoder', t5_dir, '--max-length', '8', '--dtype', 'float32')
    ref, half = str(tmp_path / 'ref'), str(tmp_path / 'bf16')
    with mock.patch.object(extract, 'build_text_encoder', build_text_encoder):
        run_extract(image_folder, ref, tiny_vae_dir, *base)
        interrupted(lambda: run_extract(image_folder, half, tiny_vae_dir, *base,
                                        '--text-encoder-dtype', 'bfloat16'))
        assert run_extract(image_folder, half, tiny_vae_dir, *base,
                           '--text-encoder-dtype', 'bfloat16')['complete']
    assert loaded == [torch.float32, torch.bfloat16, torch.bfloat16]
    assert 'text_encoder_dtype' not in index_meta(ref)  # the default: as older stores
    assert index_meta(half)['text_encoder_dtype'] == 'bfloat16'
    a, b = LatentStore(ref), LatentStore(half)
    for i in range(len(a)):
        got, want = b.text(i)['text_embeds'], a.text(i)['text_embeds']
        assert not np.array_equal(got, want)  # another encoder's rounding ...
        np.testing.assert_allclose(got, want, atol=0.1, rtol=0.05)  # ... of the same text
    vae, text = no_models()
    begun = str(tmp_path / 'begun')
    interrupted(lambda: run_extract(image_folder, begun, tiny_vae_dir, *base))
    with vae, text, pytest.raises(UserError, match=(
            r"written with text_encoder_dtype='float32' \(in .*\); this run has "
            r"text_encoder_dtype='bfloat16': .*\(set by --text-encoder-dtype\)$")):
        run_extract(image_folder, begun, tiny_vae_dir, *base, '--text-encoder-dtype',
                    'bfloat16')
