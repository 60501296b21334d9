"""The packed latent store's repair paths: a rerun of the tool that wrote a store
checks each finished shard's files once (a stat and an .npy header read each; an
extraction rerun checked them in read_store_progress and again in the writer), the
store's advice on a damaged file is one text whether the file is found so when the
store opens or when it is read, and both tools name a damaged shard with one line."""
import os
import os.path as osp
from collections import Counter

import numpy as np
import pytest

from mmsora.datasets import LatentStore, LatentStoreWriter, latent_store, shard_files
from tests.extract_tools import convert, interrupted, run_extract


def cut(path, by):
    """Cut ``by`` bytes off the end of a file; returns its size before."""
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size - by)
    return size


def count_checks(monkeypatch):
    """Record each shard check (:func:`shard_files.damaged_shard`) by the shard's
    latents file, in the order made."""
    calls, real = [], shard_files.damaged_shard

    def damaged_shard(root, shard, header):
        calls.append(shard['file'])
        return real(root, shard, header)

    monkeypatch.setattr(shard_files, 'damaged_shard', damaged_shard)  # (sound_records)
    monkeypatch.setattr(latent_store, 'damaged_shard', damaged_shard)  # (LatentStore)
    return calls


def fastdit_argv(tmp_path, n=5, shard_size=2):
    """convert_fastdit_features.py's arguments for ``n`` fast-DiT items (1, 4, 2, 2)."""
    feats, labels = tmp_path / 'features', tmp_path / 'labels'
    feats.mkdir()
    labels.mkdir()
    for i in range(n):
        np.save(feats / f'{i}.npy', np.full((1, 4, 2, 2), i, np.float32))
        np.save(labels / f'{i}.npy', np.array([i % 2]))
    return ['--features-dir', str(feats), '--labels-dir', str(labels), '--out',
            str(tmp_path / 'packed'), '--dtype', 'float32', '--shard-size', str(shard_size)]


SHARDS = [f'shard_{k:05d}.npy' for k in range(4)]


# --------------------------------------------------------------------------- #
#                   (a) each shard's files checked once a rerun                #
# --------------------------------------------------------------------------- #
def test_an_extraction_rerun_checks_each_sound_shard_once(
        image_folder, tiny_vae_dir, tmp_path, monkeypatch):
    """A complete store with a shard cut short: the sound shards were checked four
    times (read_store_progress, the writer's pending shards, the index written without
    the damaged one, the final index)."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)  # 7 inputs, shards of 2: 4 shards
    cut(osp.join(out, SHARDS[1]), 100)
    calls = count_checks(monkeypatch)
    summary = run_extract(image_folder, out, tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 1
    # (the damaged one is checked until it is written again, then its new files once)
    assert Counter(c for c in calls if c != SHARDS[1]) == dict.fromkeys(
        [SHARDS[0], SHARDS[2], SHARDS[3]], 1)


def test_a_resumed_extraction_checks_each_shard_once(
        image_folder, tiny_vae_dir, tmp_path, monkeypatch):
    """The finished shards when the rerun starts, the ones it writes when it writes the
    index: each once (the finished ones were checked three times)."""
    out = str(tmp_path / 'store')
    interrupted(lambda: run_extract(image_folder, out, tiny_vae_dir), after=2)
    calls = count_checks(monkeypatch)
    summary = run_extract(image_folder, out, tiny_vae_dir)
    assert summary['complete'] and summary['shards_written'] == 2
    assert Counter(calls) == dict.fromkeys(SHARDS, 1)
    assert calls[:2] == SHARDS[:2]  # (those found finished: before anything is encoded)


def test_a_conversion_rerun_checks_each_sound_shard_once(tmp_path, monkeypatch):
    argv = fastdit_argv(tmp_path)  # 5 items, shards of 2: 3 shards
    out = argv[argv.index('--out') + 1]
    convert.main(argv)
    cut(osp.join(out, SHARDS[1]), 4)
    calls = count_checks(monkeypatch)
    index = convert.main(argv)
    assert index['complete'] and index['num_items'] == 5
    assert Counter(c for c in calls if c != SHARDS[1]) == dict.fromkeys(
        [SHARDS[0], SHARDS[2]], 1)


# --------------------------------------------------------------------------- #
#                    (b) one advice on a damaged store file                    #
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize('vae,tool', [
    ('checkpoints/sd-vae', 'tools/extract_features.py'),
    ('fast-DiT features features/imagenet256', 'tools/convert_fastdit_features.py')])
def test_a_damaged_file_gets_one_advice_when_opened_or_read(tmp_path, vae, tool):
    """A file found cut short when the store opens, and one cut short or gone after it
    was opened (met when read): the same advice, naming the tool that wrote the store.
    A read failure advised 'restore it, or rerun the command that wrote the store (the
    same tools/extract_features.py or convert_fastdit_features.py command)'."""
    root = str(tmp_path / 'store')
    w = LatentStoreWriter(root, 4, (4, 2, 2), dtype='float32', vae=vae, shard_size=2)
    for k in w.owned_shards():
        w.write_shard(k, np.zeros((2, 1, 2, 4, 2, 2)), [0, 1])
    w.finalize()
    advice = (f'rerun the {tool} command that wrote {root!r} (the same command): it '
              'checks every shard and writes the damaged ones again (or restore the files)')
    store = LatentStore(root)
    shard = osp.join(root, SHARDS[1])
    size = cut(shard, 8)
    with pytest.raises(ValueError) as read:
        store[3]
    assert str(read.value).startswith(f'cannot read latent store file {shard!r}: it is '
                                      'truncated or damaged (')
    assert str(read.value).endswith(f'); {advice}')
    with pytest.raises(ValueError) as opened:
        LatentStore(root)
    assert str(opened.value) == (
        f'cannot read latent store file {shard!r}: it is truncated or damaged '
        f'(truncated: {size - 8} of {size} bytes); {advice}')
    os.remove(shard)
    with pytest.raises(FileNotFoundError) as gone:
        store[3]
    assert str(gone.value) == f'latent store file missing: {shard!r}; {advice}'
    with pytest.raises(FileNotFoundError) as opened:
        LatentStore(root)
    assert str(opened.value) == f'latent store file missing: {shard!r}; {advice}'


# --------------------------------------------------------------------------- #
#                  (c) one line for a damaged shard, both tools                #
# --------------------------------------------------------------------------- #
def test_both_tools_name_a_damaged_shard_with_one_line(
        image_folder, tiny_vae_dir, tmp_path, capsys):
    """convert_fastdit_features.py and extract_features.py said it each their way: one
    function says it for both, with what each does again."""
    out = str(tmp_path / 'store')
    run_extract(image_folder, out, tiny_vae_dir)
    argv = fastdit_argv(tmp_path)
    convert.main(argv)
    sizes = {'extract_features.py': cut(osp.join(out, SHARDS[1]), 100),
             'convert_fastdit_features.py': cut(
                 osp.join(argv[argv.index('--out') + 1], SHARDS[1]), 100)}
    capsys.readouterr()
    run_extract(image_folder, out, tiny_vae_dir)
    said = {'extract_features.py': capsys.readouterr().out.splitlines()[0]}
    convert.main(argv)
    said['convert_fastdit_features.py'] = capsys.readouterr().out.splitlines()[0]
    doing = {'extract_features.py': 'encoding', 'convert_fastdit_features.py': 'writing'}
    assert said == {prog: f'{prog}: shard_00001.npy: truncated ({size - 100} of {size} '
                          f'bytes): {doing[prog]} it again' for prog, size in sizes.items()}


def test_a_conversion_rerun_names_twenty_damaged_shards_and_counts_the_rest(
        tmp_path, capsys):
    """As extraction's rerun does: the converter named every one (a line a shard)."""
    argv = fastdit_argv(tmp_path, n=23, shard_size=1)
    out = argv[argv.index('--out') + 1]
    convert.main(argv)
    for k in range(22):
        cut(osp.join(out, f'shard_{k:05d}.npy'), 4)
    capsys.readouterr()
    index = convert.main(argv)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(': ')[1] for line in printed[:20]] == [
        f'shard_{k:05d}.npy' for k in range(20)]
    assert printed[20] == ('convert_fastdit_features.py: ... and 2 more damaged shards: '
                           'writing them again')
    assert printed[21].startswith('convert_fastdit_features.py: 23 latents in 23 shards')
    assert index['complete']
