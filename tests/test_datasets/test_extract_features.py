"""End-to-end tests of tools/extract_features.py and tools/convert_fastdit_features.py."""
import os
import os.path as osp
import re
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from mmsora.datasets import (LatentStore, LatentStoreWriter, NpyLatentDataset,
                             PackedLatentDataset, center_crop_arr)
from mmsora.models.vaes import AutoencoderKLWrapper
from mmsora.utils.cli import UserError
from tests.extract_tools import (REPO, convert, extract, run_extract, shard_mtimes,
                                 write_fastdit_features)



def test_extract_moments_with_flip(image_folder, tiny_vae_dir, tmp_path, capsys):
    out = str(tmp_path / 'store')
    summary = run_extract(image_folder, out, tiny_vae_dir, '--flip', '--dtype', 'float32')
    assert summary['num_items'] == 6 and summary['num_skipped'] == 1
    assert summary['skipped_this_run'] == ['b/broken.png']
    printed = capsys.readouterr().out
    assert 'skipped 1 unreadable or too short input: b/broken.png (' in printed
    # items, and the latents with --flip's copies ('6 latents' read as the store's count)
    assert ': 6 items (x2 with the flipped copies: 12 latents), latents of shape (4, 8, 8),' \
        in printed

    store = LatentStore(out)
    assert store.content == 'moments' and store.num_copies == 2
    assert store.latent_shape == (4, 8, 8) and store.scale_factor == 0.18215
    assert store.index['meta']['classes'] == ['a', 'b']
    np.testing.assert_array_equal(store.labels, [0, 0, 0, 1, 1, 1])

    # Independent reference: DiT preprocessing + diffusers directly.
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    img = center_crop_arr(Image.open(osp.join(image_folder, 'b/b1.png')).convert('RGB'), 16)
    x = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        dist = vae.encode(torch.cat([x, x.flip(-1)])).latent_dist
    item = store[4]  # a0 a1 a2 b0 [b1] b2 (broken.png skipped)
    np.testing.assert_allclose(item[:, 0], dist.mean.numpy() * 0.18215, atol=1e-5)
    np.testing.assert_allclose(item[:, 1], dist.std.numpy() * 0.18215, atol=1e-5)

    # A rerun is a no-op: nothing encoded, nothing rewritten.
    before = shard_mtimes(out)
    with mock.patch.object(AutoencoderKLWrapper, 'encode_moments',
                           side_effect=AssertionError('encoded again')):
        again = run_extract(image_folder, out, tiny_vae_dir, '--flip', '--dtype', 'float32')
    assert again['shards_written'] == 0 and again['num_items'] == 6
    assert shard_mtimes(out) == before
    # without --flip: refused naming the setting and the option (it said num_copies only)
    with pytest.raises(UserError, match=r'written with num_copies=2 .*this run has '
                                        r'num_copies=1: .* \(set by --flip\)$'):
        run_extract(image_folder, out, tiny_vae_dir, '--dtype', 'float32')

    ds = PackedLatentDataset(out, seed=0)
    assert ds[0]['latents'].shape == (4, 8, 8)


def test_extract_resume_after_crash(image_folder, tiny_vae_dir, tmp_path):
    ref = str(tmp_path / 'ref')
    run_extract(image_folder, ref, tiny_vae_dir, '--store', 'samples')

    out = str(tmp_path / 'crashed')
    real_write = LatentStoreWriter.write_shard
    calls = []

    def crash_on_third(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    with mock.patch.object(LatentStoreWriter, 'write_shard', crash_on_third):
        with pytest.raises(KeyboardInterrupt):
            run_extract(image_folder, out, tiny_vae_dir, '--store', 'samples')
    before = shard_mtimes(out)
    assert len(before) == 4  # 2 shards x (latents, labels)
    summary = run_extract(image_folder, out, tiny_vae_dir, '--store', 'samples')
    assert summary['shards_written'] == 2 and summary['complete']
    assert {p: t for p, t in shard_mtimes(out).items() if p in before} == before
    a, b = LatentStore(ref), LatentStore(out)
    assert len(a) == len(b) == 6 and a.content == 'samples'
    np.testing.assert_array_equal(a.labels, b.labels)
    for i in range(6):
        # The same per-shard noise too (allclose: batches differ after the resume).
        np.testing.assert_allclose(a[i], b[i], atol=1e-6)


def test_a_rerun_naming_the_vae_folder_otherwise_is_the_same_run(image_folder, tiny_vae_dir,
                                                                   tmp_path, monkeypatch):
    """--vae vae/ (tab completion), ./vae or an absolute path on a rerun was refused as
    'a latent store written with vae='vae'': resuming from another folder too (walk-
    through o)."""
    out = str(tmp_path / 'store')
    monkeypatch.chdir(osp.dirname(tiny_vae_dir))
    name = osp.basename(tiny_vae_dir)
    run_extract(image_folder, out, name)
    for other in (name + '/', './' + name, tiny_vae_dir):
        assert run_extract(image_folder, out, other)['complete']
    with pytest.raises(UserError, match=f"written with vae='{re.escape(tiny_vae_dir)}'"):
        run_extract(image_folder, out, str(tmp_path))  # another folder: refused


def test_extract_errors(tiny_vae_dir, image_folder, tmp_path):
    with pytest.raises(UserError, match=r'^.*missing.*does not exist'):
        run_extract(str(tmp_path / 'missing'), str(tmp_path / 'o'), tiny_vae_dir)
    (tmp_path / 'taken').write_text('')
    with pytest.raises(UserError, match=r'taken/store: .*taken is a file, not a folder$'):
        run_extract(image_folder, str(tmp_path / 'taken' / 'store'), tiny_vae_dir)
    with pytest.raises(UserError, match='--num-workers must be >= 0, got -1'):
        run_extract(image_folder, str(tmp_path / 'o'), tiny_vae_dir, '--num-workers', '-1')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(UserError, match='holds no images'):
        run_extract(str(tmp_path / 'empty'), str(tmp_path / 'o'), tiny_vae_dir)
    with pytest.raises(UserError, match='no_vae'):
        run_extract(image_folder, str(tmp_path / 'o'), str(tmp_path / 'no_vae'))
    # Every picture unreadable: an error, and the empty store is refused for training
    # (mmengine's infinite sampler would wait on it for ever).
    (tmp_path / 'bad' / 'a').mkdir(parents=True)
    (tmp_path / 'bad' / 'a' / 'x.png').write_bytes(b'\x89PNG\r\n\x1a\n not a png')
    with pytest.raises(UserError, match=r'^no latents written to .*empty_store: all 1 '
                                         r'inputs were skipped \(unreadable, too short or '
                                         r'encoded to NaN / inf: listed above\)$'):
        run_extract(str(tmp_path / 'bad'), str(tmp_path / 'empty_store'), tiny_vae_dir)
    with pytest.raises(ValueError, match=r"holds no latents \(its extraction skipped all 1 "):
        PackedLatentDataset(str(tmp_path / 'empty_store'))


def test_extract_workers_default_to_the_cpus_there_are(tmp_path):
    """4 decoding workers by default, fewer where the process may use fewer CPUs (on 2
    cores torch warned that 4 workers were more than suggested)."""
    base = ['--data-path', str(tmp_path), '--out', str(tmp_path / 'o'), '--vae', 'v']
    for cpus, expected in (({0, 1}, 2), (set(range(16)), 4)):
        with mock.patch.object(extract.os, 'sched_getaffinity', lambda pid: cpus,
                               create=True):
            args = extract.parse_args(base)
            extract.check_args(args)
            assert args.num_workers == expected
    args = extract.parse_args(base + ['--num-workers', '6'])
    extract.check_args(args)
    assert args.num_workers == 6


def test_tools_exit_2_with_one_line(tmp_path):
    """Both tools' mistakes end as every tool's do (run_cli): one ``error:`` line on
    stderr and exit status 2, no traceback."""
    (tmp_path / 'taken').write_text('')
    for tool, args, message in (
            ('extract_features', ['--data-path', str(tmp_path / 'missing'), '--vae', 'v'],
             f"error: image folder '{tmp_path / 'missing'}' does not exist"),
            ('convert_fastdit_features', ['--features-dir', str(tmp_path / 'nope'),
                                          '--labels-dir', str(tmp_path)],
             f"error: features_dir '{tmp_path / 'nope'}' does not exist")):
        res = subprocess.run([sys.executable, osp.join(REPO, 'tools', f'{tool}.py'), *args,
                              '--out', str(tmp_path / 'taken' / 'store')],
                             capture_output=True, text=True, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and 'Traceback' not in res.stderr, res.stderr
        assert lines[-1].startswith(message), lines


def test_extract_two_ranks_simulated(image_folder, tiny_vae_dir, tmp_path):
    """Ranks 1 then 0 of 2 (rank 0 finalizes after the barrier) == one process."""
    out, ref = str(tmp_path / 'store'), str(tmp_path / 'ref')
    for rank in (1, 0):
        with mock.patch.object(extract, 'init_dist',
                               return_value=(rank, 2, torch.device('cpu'))):
            summary = run_extract(image_folder, out, tiny_vae_dir, '--dtype', 'float32')
        assert (summary is None) == (rank == 1)
    assert summary['shards_written'] == 2 and summary['complete']  # shards 0 and 2
    run_extract(image_folder, ref, tiny_vae_dir, '--dtype', 'float32')
    a, b = LatentStore(ref), LatentStore(out)
    np.testing.assert_array_equal(a.labels, b.labels)
    for i in range(len(a)):  # batches differ, so float rounding may too
        np.testing.assert_allclose(a[i], b[i], atol=1e-6)


# Two real processes take ~30 s on 2 CPU cores: opt in with MMSORA_TEST_TORCHRUN=1.
@pytest.mark.skipif(not os.environ.get('MMSORA_TEST_TORCHRUN'),
                    reason='set MMSORA_TEST_TORCHRUN=1 to run torchrun end to end')
def test_extract_torchrun_two_ranks(image_folder, tiny_vae_dir, tmp_path):
    out = str(tmp_path / 'store')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', '29531', osp.join(REPO, 'tools', 'extract_features.py'),
           '--data-path', image_folder, '--out', out, '--vae', tiny_vae_dir,
           '--image-size', '16', '--shard-size', '2', '--num-workers', '0',
           '--device', 'cpu', '--dtype', 'float32']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(os.listdir(osp.join(out, 'parts'))) == ['rank-00000.json',
                                                         'rank-00001.json']
    ref = str(tmp_path / 'ref')
    run_extract(image_folder, ref, tiny_vae_dir, '--dtype', 'float32')
    a, b = LatentStore(ref), LatentStore(out)
    np.testing.assert_array_equal(a.labels, b.labels)
    for i in range(len(a)):
        np.testing.assert_allclose(a[i], b[i], atol=1e-6)


def test_convert_fastdit_round_trip(tmp_path):
    feats, labels = write_fastdit_features(tmp_path)
    out = str(tmp_path / 'packed')
    index = convert.main(['--features-dir', str(feats), '--labels-dir', str(labels),
                          '--out', out, '--dtype', 'float32', '--shard-size', '4'])
    assert index['content'] == 'samples' and index['num_copies'] == 1
    assert index['num_items'] == 11 and index['complete']
    src = NpyLatentDataset(str(feats), str(labels))
    dst = PackedLatentDataset(out, seed=0)
    assert len(dst) == 11
    for i in range(11):
        assert torch.equal(src[i]['latents'], dst[i]['latents'])
        assert src[i]['labels'] == dst[i]['labels']
    with pytest.raises(UserError, match=r'nope'):
        convert.main(['--features-dir', str(tmp_path / 'nope'), '--labels-dir',
                      str(labels), '--out', out])
