"""What a folder given as a latent store holds, by one rule (folder_entries: the hints
of LatentStore and the refusal of a foreign --out read it alike), and the lock that
keeps a second tools/extract_features.py run out of an --out being written."""
import json
import os
import socket
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest

from mmsora.datasets import LatentStore, LatentStoreWriter
from mmsora.datasets.store_folder import _what_is_there, folder_entries, foreign_folder
from mmsora.datasets.store_lock import LOCK_NAME, StoreLock, StoreLockedError
from mmsora.utils.cli import UserError
from tests.extract_tools import REPO, extract, run_extract

pytestmark = pytest.mark.usefixtures('kept_environ', 'fresh_notes')

EMPTY = (' (the folder is empty: extraction stopped before its first shard? rerun the '
         'extraction to write the store)')


# --------------------------------------------------------------------------- #
#                            1. one rule for a folder                          #
# --------------------------------------------------------------------------- #
def test_hidden_entries_are_passed_over_by_both_readers(tmp_path):
    """A .DS_Store (or the extraction lock) alone: foreign_folder took the folder as
    empty, LatentStore's hint said nothing (it counted the hidden file)."""
    root = tmp_path / 'store'
    root.mkdir()
    for name in ('.DS_Store', LOCK_NAME):
        (root / name).write_text('x')
    assert folder_entries(str(root)) == {'.DS_Store': 'hidden', LOCK_NAME: 'hidden'}
    assert foreign_folder(str(root)) == []
    assert _what_is_there(str(root)) == EMPTY
    # a hidden folder's files are passed over too: a README beside .cache/0.npy is not
    # fast-DiT's features (the hint named them), and it is what the folder holds
    (root / '.cache').mkdir()
    np.save(root / '.cache' / '0.npy', np.zeros(2))
    (root / 'README.md').write_text('my latents go here')
    assert foreign_folder(str(root)) == ['README.md']
    assert _what_is_there(str(root)) == ''


def test_subfolders_and_older_temporaries_count_alike(tmp_path):
    """An empty subfolder made the hint say 'the folder is empty' while the folder was
    refused as holding it; a shard's older temporary name (a write cut off) read as a
    store begun to one reader and as nothing to the other."""
    root = tmp_path / 'store'
    (root / 'vis_data').mkdir(parents=True)
    assert foreign_folder(str(root)) == ['vis_data']
    assert _what_is_there(str(root)) == ''
    (root / 'vis_data').rmdir()
    (root / 'shard_00002.npy.tmp.77').write_bytes(b'\x93NUMPY')
    assert folder_entries(str(root)) == {'shard_00002.npy.tmp.77': 'temporary'}
    assert foreign_folder(str(root)) == []
    assert _what_is_there(str(root)) == EMPTY


def test_the_hint_reads_a_large_tree_no_further_than_it_needs(tmp_path, monkeypatch):
    """The hint listed every file under the folder before looking at 1000 of them: a
    parent folder of ImageNet given as the store was walked whole."""
    for d in range(3):
        folder = tmp_path / 'pics' / f'd{d}'
        folder.mkdir(parents=True)
        for i in range(600):
            (folder / f'{i}.png').write_bytes(b'')
    walked, real_walk = [], os.walk

    def counting_walk(top, *args, **kwargs):
        for entry in real_walk(top, *args, **kwargs):
            walked.append(entry[0])
            yield entry
    monkeypatch.setattr(os, 'walk', counting_walk)
    assert 'holds pictures or videos' in _what_is_there(str(tmp_path))
    assert not any(folder.endswith('d2') for folder in walked), walked


# --------------------------------------------------------------------------- #
#                           2. one run into an --out                           #
# --------------------------------------------------------------------------- #
def write_lock(root, pid, host=None, started=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / LOCK_NAME).write_text(json.dumps(dict(
        pid=pid, host=host or socket.gethostname(), started=started,
        since='2026-12-07 01:00:00 UTC')))


def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def no_models():
    """Patches that fail the test if the VAE or the text encoder is loaded."""
    return (mock.patch.object(extract, 'build_vae', side_effect=AssertionError('VAE loaded')),
            mock.patch.object(extract, 'build_text_encoder',
                              side_effect=AssertionError('text encoder loaded')))


def test_a_second_run_is_refused_naming_the_pid_that_holds_the_folder(
        image_folder, tiny_vae_dir, tmp_path):
    """Two runs with one --out both encoded every shard."""
    out = tmp_path / 'store'
    write_lock(out, os.getpid())  # (a running process: this one)
    vae, text = no_models()
    with vae, text, pytest.raises(UserError) as info:
        run_extract(image_folder, str(out), tiny_vae_dir)
    assert str(info.value) == (
        f'--out {out} is being written by another run (pid {os.getpid()}, since '
        '2026-12-07 01:00:00 UTC): let it finish (or stop it), then rerun to go on; each '
        'shard is written once')
    assert os.listdir(out) == [LOCK_NAME]  # (left to its holder)
    write_lock(out, os.getpid(), host='elsewhere')  # (a machine this one cannot check)
    with vae, text, pytest.raises(UserError, match=rf'\(pid {os.getpid()} on elsewhere, '
                                  rf'since .*\): let it finish, or remove {out}/{LOCK_NAME} '
                                  'if that run has stopped'):
        run_extract(image_folder, str(out), tiny_vae_dir)


def test_a_lock_whose_process_is_gone_is_taken_over(image_folder, tiny_vae_dir, tmp_path,
                                                     capsys):
    """A crash (or a kill) leaves the lock: the next run goes on, the lock ends with it."""
    out = tmp_path / 'store'
    pid = dead_pid()
    write_lock(out, pid)
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    assert (f'note: {out}: taking over the lock of a run that stopped (pid {pid} '
            'is gone): its finished shards are kept') in capsys.readouterr().err
    assert LOCK_NAME not in os.listdir(out)
    # a running pid that another process has since been given (after a reboot): its
    # start time is not the one the lock records
    write_lock(out, os.getpid(), started='1')
    os.remove(out / 'index.json')
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    assert 'taking over the lock' in capsys.readouterr().err
    (out / LOCK_NAME).write_text('')  # made, then the run stopped before writing it
    os.utime(out / LOCK_NAME, (time.time() - 60,) * 2)  # (a minute ago: no run's instant)
    os.remove(out / 'index.json')
    assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    assert 'its lock is unreadable' in capsys.readouterr().err
    assert LOCK_NAME not in os.listdir(out)


def test_a_real_second_process_holds_the_lock_until_it_ends(image_folder, tiny_vae_dir,
                                                             tmp_path):
    out = tmp_path / 'deep' / 'store'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys; from mmsora.datasets.store_lock import '
         f'StoreLock; StoreLock({str(out)!r}).acquire(); print("held", flush=True); '
         'sys.stdin.read()'], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline() == 'held\n'
        with pytest.raises(UserError, match=rf'^--out {out} is being written by another '
                                            rf'run \(pid {holder.pid}, since '):
            run_extract(image_folder, str(out), tiny_vae_dir)
        holder.kill()  # (no release: as a crash)
        holder.wait()
        assert run_extract(image_folder, str(out), tiny_vae_dir)['complete']
    finally:
        holder.kill()
        holder.wait()
    assert LOCK_NAME not in os.listdir(out)


def test_the_lock_goes_with_a_run_that_fails(image_folder, tiny_vae_dir, tmp_path):
    """Removed on error (and the folders made for it, left empty)."""
    out = tmp_path / 'new' / 'store'
    with mock.patch.object(extract, 'build_vae', side_effect=UserError('no VAE')), \
            pytest.raises(UserError, match='no VAE'):
        run_extract(image_folder, str(out), tiny_vae_dir)
    assert not (tmp_path / 'new').exists()
    with mock.patch.object(extract, 'encode_all', side_effect=RuntimeError('boom')), \
            pytest.raises(RuntimeError):
        run_extract(image_folder, str(out), tiny_vae_dir)
    assert not (out / LOCK_NAME).exists()


def test_the_ranks_of_one_run_are_not_refused(image_folder, tiny_vae_dir, tmp_path,
                                              monkeypatch):
    """Rank 0 alone takes the lock: the other ranks write their shards into the folder
    it holds."""
    out = tmp_path / 'store'
    write_lock(out, os.getpid())  # (rank 0's, held)
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    with mock.patch.object(extract, 'init_dist', return_value=(1, 2, extract.torch.device(
            'cpu'))):
        assert run_extract(image_folder, str(out), tiny_vae_dir) is None
    assert sorted(n for n in os.listdir(out) if n.startswith('shard')) == [
        'shard_00001.npy', 'shard_00003.npy']
    assert (out / LOCK_NAME).exists()  # (not its own: left)
    monkeypatch.setenv('RANK', '0')
    with mock.patch.object(extract, 'init_dist', return_value=(0, 2, extract.torch.device(
            'cpu'))), pytest.raises(UserError, match='is being written by another run'):
        run_extract(image_folder, str(out), tiny_vae_dir)


def test_every_rank_hears_rank_0s_word(tmp_path):
    """Through the process group (one process of gloo here): a refusal reaches every
    rank before any writes."""
    import torch.distributed as dist
    write_lock(tmp_path, os.getpid())
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "rdzv"}', rank=0,
                            world_size=1)
    try:
        with mock.patch.object(dist, 'broadcast_object_list',
                               wraps=dist.broadcast_object_list) as told, \
                pytest.raises(UserError, match=f'pid {os.getpid()}'):
            extract.lock_out(StoreLock(str(tmp_path)), 0)
        assert told.call_count == 1
    finally:
        dist.destroy_process_group()


def test_the_lock_leaves_the_store_readable_and_writable(tmp_path):
    """Hidden: the writer's clean-up, the store's readers and a foreign --out's check
    pass it over; a complete store needs no lock to be found complete."""
    root = tmp_path / 'store'
    with StoreLock(str(root)) as lock:
        assert folder_entries(str(root)) == {LOCK_NAME: 'hidden'}
        with pytest.raises(StoreLockedError):
            StoreLock(str(root)).acquire()
        writer = LatentStoreWriter(str(root), 2, (4, 2, 2), shard_size=2)
        writer.write_shard(0, np.zeros((2, 1, 2, 4, 2, 2)), [0, 1])
        writer.finalize()
        assert len(LatentStore(str(root))) == 2 and foreign_folder(str(root)) == []
        assert LOCK_NAME in os.listdir(root) and lock.path.endswith(LOCK_NAME)
    assert LOCK_NAME not in os.listdir(root)


# Real processes take ~1 min on 2 CPU cores: opt in with MMSORA_TEST_TORCHRUN=1.
@pytest.mark.skipif(not os.environ.get('MMSORA_TEST_TORCHRUN'),
                    reason='set MMSORA_TEST_TORCHRUN=1 to run torchrun end to end')
def test_torchrun_takes_one_lock_and_is_refused_as_one(image_folder, tiny_vae_dir, tmp_path):
    out = tmp_path / 'store'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', '29534', os.path.join(REPO, 'tools', 'extract_features.py'),
           '--data-path', image_folder, '--out', str(out), '--vae', tiny_vae_dir,
           '--image-size', '16', '--shard-size', '2', '--num-workers', '0',
           '--device', 'cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert LatentStore(str(out)).index['complete'] and not (out / LOCK_NAME).exists()
    os.remove(out / 'index.json')
    write_lock(out, os.getpid())
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert res.returncode != 0
    assert res.stderr.count(f'--out {out} is being written by another run') == 1
