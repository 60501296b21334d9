"""tools/extract_features.py: a manifest or image folder changed under a store, the
rerun of a complete store (no model loaded), text kept in the store's dtype while a
shard fills, and the --target-fps wording."""
import json
import os
import os.path as osp
from unittest import mock

import numpy as np
import pytest
import torch

from mmsora.datasets import LatentStore, LatentStoreWriter, write_manifest
from mmsora.datasets.extraction_sources import fingerprint_items
from mmsora.models import HFTextEncoder
from mmsora.utils.cli import UserError
from tests.shared_videos import BIKES, BUNNY, needs_videos
from tests.extract_tools import extract, interrupted, run_extract, shard_mtimes
from tests.tiny_models import make_tiny_text_encoder

CHANGED = (r'^--data-path .*images: the image folder changed since the store at .*store '
           r'was started \(other files, or files in other classes\): extract into a new '
           r'--out$')


def no_models():
    """Patches that fail the test if the VAE or the text encoder is loaded."""
    return (mock.patch.object(extract, 'build_vae', side_effect=AssertionError('VAE loaded')),
            mock.patch.object(extract, 'build_text_encoder',
                              side_effect=AssertionError('text encoder loaded')))


# --------------------------------------------------------------------------- #
#                  1. other source items, the same number of them              #
# --------------------------------------------------------------------------- #
def test_a_changed_image_folder_is_refused(image_folder, tiny_vae_dir, tmp_path):
    """A folder whose files changed but not their number was resumed (and a complete
    store found done): the store no longer matched its inputs."""
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir))
    # a0.png moves to class b: 7 files still, one of them with another label
    os.rename(osp.join(image_folder, 'a', 'a0.png'), osp.join(image_folder, 'b', 'a0.png'))
    vae, text = no_models()
    with vae, text, pytest.raises(UserError, match=CHANGED):
        run_extract(image_folder, out, tiny_vae_dir)
    os.rename(osp.join(image_folder, 'b', 'a0.png'), osp.join(image_folder, 'a', 'a0.png'))
    assert run_extract(image_folder, out, tiny_vae_dir)['complete']  # as it was: resumes
    index = json.load(open(osp.join(out, 'index.json')))
    assert len(index['source_fingerprint']) == 64
    # a complete store too: refused, not 'nothing to do'
    os.rename(osp.join(image_folder, 'a', 'a1.png'), osp.join(image_folder, 'a', 'a9.png'))
    with pytest.raises(UserError, match=CHANGED):
        run_extract(image_folder, out, tiny_vae_dir)


def test_every_rank_refuses_a_changed_folder(image_folder, tiny_vae_dir, tmp_path,
                                             monkeypatch):
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir))
    os.rename(osp.join(image_folder, 'a', 'a0.png'), osp.join(image_folder, 'a', 'a5.png'))
    monkeypatch.setenv('WORLD_SIZE', '2')
    for rank in ('1', '0'):  # before any joins the process group: no rank waits on another
        monkeypatch.setenv('RANK', rank)
        with pytest.raises(UserError, match=CHANGED):
            run_extract(image_folder, out, tiny_vae_dir)


def test_a_store_without_a_fingerprint_still_resumes(image_folder, tiny_vae_dir, tmp_path):
    """Stores begun before the fingerprint was recorded resume, and keep none: this
    run's would say their older shards came from this run's items, which nothing
    checked."""
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir))
    part = osp.join(out, 'parts', 'rank-00000.json')
    data = json.load(open(part))
    assert data.pop('source_fingerprint')
    json.dump(data, open(part, 'w'))
    summary = run_extract(image_folder, out, tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 3
    assert 'source_fingerprint' not in LatentStore(out).index
    assert 'source_fingerprint' not in json.load(open(part))


@needs_videos
def test_a_changed_manifest_is_refused(tmp_path, tiny_vae_dir):
    rows = [dict(path=BIKES, caption='bikes on the road', label=1, fps=25.0),
            dict(path=BUNNY, caption='a rabbit in the snow', label=0, fps=25.0)]
    manifest, out = str(tmp_path / 'clips.csv'), str(tmp_path / 'store')
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    argv = ['--manifest', manifest, '--out', out, '--num-frames', '2', '--size', '16',
            '--shard-size', '1', '--num-workers', '0', '--device', 'cpu', '--vae',
            tiny_vae_dir, '--text-encoder', t5, '--max-length', '8']
    write_manifest(rows, manifest)
    assert extract.main(argv)['complete']
    changed = (r'^--manifest .*clips.csv changed since the store at .*store was started '
               r'\(its rows are other ones: other files, captions or labels, or another '
               r'order\): extract into a new --out$')
    for other in ([rows[1], rows[0]],  # shuffled
                  [rows[0], dict(rows[1], caption='a rabbit in the grass')],
                  [rows[0], dict(rows[1], label=2)],
                  [rows[0], dict(rows[1], path=BIKES)]):
        write_manifest(other, manifest)
        vae, text = no_models()
        with vae, text, pytest.raises(UserError, match=changed):
            extract.main(argv)
    write_manifest(rows, manifest)
    vae, text = no_models()
    with vae, text:
        assert extract.main(argv)['shards_written'] == 0


# --------------------------------------------------------------------------- #
#              2. what is in --out is read before any model loads              #
# --------------------------------------------------------------------------- #
def test_a_complete_store_loads_no_model(image_folder, tiny_vae_dir, tmp_path, capsys,
                                         monkeypatch):
    """A rerun on a complete store loaded the VAE and the text encoder (minutes with
    T5-XXL) and then wrote nothing."""
    out = str(tmp_path / 'store')
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    run_extract(image_folder, out, tiny_vae_dir, '--text-encoder', t5)
    capsys.readouterr()
    before = shard_mtimes(out)
    vae, text = no_models()
    with vae, text:
        summary = run_extract(image_folder, out, tiny_vae_dir, '--text-encoder', t5)
    assert summary['shards_written'] == 0 and summary['num_items'] == 6
    assert capsys.readouterr().out.startswith(
        f'extract_features.py: {out} is complete (6 items in 4 shards): nothing to do; '
        'skipped 1 unreadable or too short input: b/broken.png (')
    assert shard_mtimes(out) == before
    # other settings are still refused, before the models load
    vae, text = no_models()
    with vae, text, pytest.raises(UserError, match=r'written with text_shape=\[120, 32\] .*'
                                                   r'this run has text_shape=\[7, 32\]: .*'
                                                   r'\(set by --text-encoder / --max-length\)$'):
        run_extract(image_folder, out, tiny_vae_dir, '--text-encoder', t5, '--max-length', '7')
    # every torchrun rank finds it complete before any joins the process group
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    vae, text = no_models()
    with vae, text:
        assert run_extract(image_folder, out, tiny_vae_dir, '--text-encoder', t5) is None
    assert capsys.readouterr().out == ''


def test_a_resume_says_so_before_the_models_load(image_folder, tiny_vae_dir, tmp_path,
                                                 capsys):
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir))
    capsys.readouterr()
    real, said = extract.build_vae, []

    def build_vae(args):
        said.append(capsys.readouterr().out)
        return real(args)

    with mock.patch.object(extract, 'build_vae', build_vae):
        assert run_extract(image_folder, out, tiny_vae_dir)['shards_written'] == 3
    assert said == [f'extract_features.py: resuming: 1 of 4 shards done at {out}\n']


# --------------------------------------------------------------------------- #
#              3. text kept in the store's dtype while a shard fills           #
# --------------------------------------------------------------------------- #
def test_text_is_kept_in_the_store_dtype(image_folder, tiny_vae_dir, tmp_path):
    """Text embeddings were kept as float32 per item and stacked at the shard's end
    (~3x the float16 shard at its peak)."""
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    enc = HFTextEncoder(t5, max_length=8)
    fields = extract.encode_text(enc, ['a', 'b c'], 'cpu', torch.float16)
    assert fields['text_embeds'].dtype == torch.float16 and fields['text_embeds'].shape == (
        2, 8, 32)
    assert fields['text_mask'].dtype == torch.bool

    given = []
    real = LatentStoreWriter.write_shard

    def write_shard(self, shard_id, latents, labels, skipped=(), text=None, **kwargs):
        given.append((latents.dtype, text['text_embeds'].dtype))
        return real(self, shard_id, latents, labels, skipped, text=text, **kwargs)

    out, ref = str(tmp_path / 'store'), str(tmp_path / 'ref')
    with mock.patch.object(LatentStoreWriter, 'write_shard', write_shard):
        run_extract(image_folder, out, tiny_vae_dir, '--text-encoder', t5, '--max-length',
                    '8', '--dtype', 'bfloat16')
    assert set(given) == {(torch.bfloat16, torch.bfloat16)}
    # the float32 values rounded once, as the writer rounded them
    run_extract(image_folder, ref, tiny_vae_dir, '--text-encoder', t5, '--max-length', '8',
                '--dtype', 'float32')
    a, b = LatentStore(ref), LatentStore(out)
    for i in range(len(a)):
        np.testing.assert_array_equal(
            b.text(i)['text_embeds'],
            torch.from_numpy(a.text(i)['text_embeds']).to(torch.bfloat16).float().numpy())
        np.testing.assert_array_equal(b.text(i)['text_mask'], a.text(i)['text_mask'])


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_moments_kept_in_the_store_dtype_round_as_before(image_folder, tiny_vae_dir,
                                                         tmp_path, dtype):
    ref, out = str(tmp_path / 'ref'), str(tmp_path / 'out')
    run_extract(image_folder, ref, tiny_vae_dir, '--dtype', 'float32', '--flip')
    run_extract(image_folder, out, tiny_vae_dir, '--dtype', dtype, '--flip')
    a, b = LatentStore(ref), LatentStore(out)
    for i in range(len(a)):
        np.testing.assert_array_equal(
            b[i], torch.from_numpy(a[i]).to(getattr(torch, dtype)).float().numpy())


def test_text_stores_take_smaller_shards_by_default(image_folder, tiny_vae_dir, tmp_path,
                                                    capsys):
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    base = ['--data-path', image_folder, '--vae', tiny_vae_dir, '--image-size', '16',
            '--num-workers', '0', '--device', 'cpu']
    extract.main(base + ['--out', str(tmp_path / 'plain')])
    extract.main(base + ['--out', str(tmp_path / 'text'), '--text-encoder', t5])
    assert LatentStore(str(tmp_path / 'plain')).index['shard_size'] == 4096
    assert LatentStore(str(tmp_path / 'text')).index['shard_size'] == 1024
    # a store begun with other shards resumes without --shard-size (it was refused)
    out = str(tmp_path / 'begun')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir, '--text-encoder', t5))
    summary = extract.main(base + ['--out', out, '--text-encoder', t5, '--batch-size', '3'])
    assert summary['complete'] and LatentStore(out).index['shard_size'] == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        extract.parse_args(['--help'])
    shown = ' '.join(capsys.readouterr().out.split())
    assert ('width x 2 bytes (x4 in float32), 0.94 MiB for T5-XXL at 120 tokens, ~1 GiB a '
            'shard') in shown


# --------------------------------------------------------------------------- #
#                                   5. wording                                 #
# --------------------------------------------------------------------------- #
def test_target_fps_is_named(tmp_path):
    for value in ('0', '-2', 'nan'):
        with pytest.raises(UserError, match=rf'^--target-fps must be a positive number, '
                                            rf'got {value}$'):
            extract.main(['--manifest', str(tmp_path / 'm.csv'), '--out', str(tmp_path / 'o'),
                          '--vae', 'v', '--target-fps', value])


@needs_videos
def test_clips_slower_than_target_fps_are_warned_once(tmp_path, tiny_vae_dir, capsys):
    """--target-fps 100 on 25 fps videos took every frame (25 fps clips) without a word."""
    manifest = str(tmp_path / 'clips.csv')
    write_manifest([dict(path=BIKES, fps=25.0, num_frames=250),
                    dict(path=BUNNY, fps=25.0, num_frames=132)], manifest)
    argv = ['--manifest', manifest, '--num-frames', '2', '--size', '16', '--num-workers',
            '0', '--device', 'cpu', '--vae', tiny_vae_dir]
    extract.main(argv + ['--out', str(tmp_path / 'fast'), '--target-fps', '100'])
    err = capsys.readouterr().err
    assert err.count('warning:') == 1
    assert (f'warning: 2 of 2 videos are slower than --target-fps 100 (e.g. {BIKES} at 25 '
            'fps): every frame of those is taken (stride 1), so their clips run at their '
            'own rate, not 100 fps') in err
    extract.main(argv + ['--out', str(tmp_path / 'slow'), '--target-fps', '10'])
    assert 'warning' not in capsys.readouterr().err


def test_one_item_is_one_item(tmp_path, tiny_vae_dir, capsys):
    from PIL import Image
    (tmp_path / 'images' / 'a').mkdir(parents=True)
    Image.new('RGB', (16, 16)).save(tmp_path / 'images' / 'a' / 'x.png')
    out = str(tmp_path / 'store')
    run_extract(str(tmp_path / 'images'), out, tiny_vae_dir)
    printed = capsys.readouterr().out
    assert 'extract_features.py: 1 item, latents of shape (4, 8, 8), in 1/1 shards' in printed
    assert '(1 shard written by rank 0 in this run); skipped 0 ' in printed
    run_extract(str(tmp_path / 'images'), out, tiny_vae_dir)
    assert capsys.readouterr().out == (f'extract_features.py: {out} is complete (1 item in '
                                       '1 shard): nothing to do\n')


def test_the_fingerprint_streams():
    """Hashed as the rows are iterated (no list of them is made): a generator gives
    the digest the list does; the order counts."""
    rows = [(f'clip_{i}.mp4', 'a caption', i % 3) for i in range(10_000)]
    assert fingerprint_items(row for row in rows) == fingerprint_items(rows)
    assert fingerprint_items(rows[::-1]) != fingerprint_items(rows)


# Real processes take ~1 min on 2 CPU cores: opt in with MMSORA_TEST_TORCHRUN=1.
@pytest.mark.skipif(not os.environ.get('MMSORA_TEST_TORCHRUN'),
                    reason='set MMSORA_TEST_TORCHRUN=1 to run torchrun end to end')
def test_torchrun_ranks_agree_on_resume_and_completion(image_folder, tiny_vae_dir, tmp_path):
    import subprocess
    import sys
    from tests.extract_tools import REPO
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', '29533', osp.join(REPO, 'tools', 'extract_features.py'),
           '--data-path', image_folder, '--out', out, '--vae', tiny_vae_dir,
           '--image-size', '16', '--shard-size', '2', '--num-workers', '0',
           '--device', 'cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def torchrun():
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)

    res = torchrun()
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('resuming: 1 of 4 shards done') == 1  # rank 0 says it
    assert LatentStore(out).index['complete']
    res = torchrun()
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count(f'{out} is complete (6 items in 4 shards): nothing to do') == 1
    os.rename(osp.join(image_folder, 'a', 'a0.png'), osp.join(image_folder, 'a', 'a7.png'))
    res = torchrun()
    assert res.returncode != 0
    assert res.stderr.count('the image folder changed since the store') == 2  # both ranks
