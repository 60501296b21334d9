"""A user's walk-through of extracting a folder of clips: class names of video stores,
odd latent sides, the skipped clips of one video."""
import json
import os

import pytest

from mmsora.datasets import LatentStore, PackedLatentDataset, write_manifest
from mmsora.utils.cli import UserError
from tests.shared_videos import BIKES, BUNNY, needs_videos
from tests.extract_tools import extract, load_tool

pytestmark = [needs_videos, pytest.mark.usefixtures('kept_environ')]
make_manifest = load_tool('make_manifest')


def labelled_folder(root, bikes_class, bunny_class):
    """``root/bikes_class/bikes.mp4`` and ``root/bunny_class/bunny.mp4`` (links)."""
    for name, video in ((bikes_class, BIKES), (bunny_class, BUNNY)):
        os.makedirs(root / name)
        os.symlink(video, root / name / os.path.basename(video))
    return str(root)


def extract_clips(manifest, out, vae, *extra):
    return extract.main(['--manifest', manifest, '--out', out, '--vae', vae,
                         '--num-frames', '2', '--size', '16', '--num-workers', '0',
                         '--device', 'cpu', '--dtype', 'float32', *extra])


def store_of(tmp_path, name, bikes_class, bunny_class, vae):
    """make_manifest.py --label-from-folder on a folder of two classes, extracted."""
    videos = labelled_folder(tmp_path / f'{name}_videos', bikes_class, bunny_class)
    manifest = str(tmp_path / f'{name}.csv')
    make_manifest.main([videos, '--out', manifest, '--label-from-folder', '--workers', '1'])
    extract_clips(manifest, str(tmp_path / 'stores' / name), vae)
    return manifest


def test_video_stores_of_two_label_maps_are_refused_together(tmp_path, tiny_vae_dir):
    """Label 0 was biking in one store and bunny in the other: the stores recorded no
    class names, and trained together without a word."""
    store_of(tmp_path, 'a', 'biking', 'bunny', tiny_vae_dir)
    store_of(tmp_path, 'b', 'b_biking', 'a_bunny', tiny_vae_dir)
    a, b = (LatentStore(str(tmp_path / 'stores' / n)) for n in 'ab')
    assert a.index['meta']['classes'] == ['biking', 'bunny']
    assert b.index['meta']['classes'] == ['a_bunny', 'b_biking']
    # biking then bunny in a, bunny then biking in b (the manifests' sorted paths)
    assert a.labels.tolist() == b.labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"cannot be read as one dataset: classes "
                                         r"\['biking', 'bunny'\] against \['a_bunny', "
                                         r"'b_biking'\] \(label 0 is 'biking' in one, "
                                         r"'a_bunny' in the other\)"):
        PackedLatentDataset(str(tmp_path / 'stores'), store=['a', 'b'])
    # the same label map goes together
    store_of(tmp_path, 'c', 'biking', 'bunny', tiny_vae_dir)
    assert len(PackedLatentDataset(str(tmp_path / 'stores'), store=['a', 'c'])) == 4


def test_stores_that_name_the_same_labels_alike_go_together(tmp_path, tiny_vae_dir):
    """Class names are compared label by label, where both stores name one: a store
    of fewer classes, or one whose manifest names no class for a label (a class whose
    videos were all unreadable), goes with one of all of them."""
    store_of(tmp_path, 'a', 'biking', 'bunny', tiny_vae_dir)
    for name, rows in (('few', [dict(path=BIKES, label=0, class_name='biking')]),
                       ('gap', [dict(path=BUNNY, label=1, class_name='bunny')]),
                       ('other', [dict(path=BUNNY, label=0, class_name='bunny')])):
        manifest = str(tmp_path / f'{name}.csv')
        write_manifest(rows, manifest)
        extract_clips(manifest, str(tmp_path / 'stores' / name), tiny_vae_dir)
    assert LatentStore(str(tmp_path / 'stores' / 'gap')).index['meta']['classes'] == [
        None, 'bunny']
    assert len(PackedLatentDataset(str(tmp_path / 'stores'), store=['few', 'a', 'gap'])) == 4
    with pytest.raises(ValueError, match=r"\(label 0 is 'biking' in one, 'bunny' in the "
                                         r'other\)'):
        PackedLatentDataset(str(tmp_path / 'stores'), store=['few', 'gap', 'other'])


def test_a_label_the_manifest_names_twice_is_refused(tmp_path, tiny_vae_dir):
    manifest = str(tmp_path / 'two.csv')
    write_manifest([dict(path=BIKES, label=0, class_name='biking'),
                    dict(path=BUNNY, label=0, class_name='bunny')], manifest)
    with pytest.raises(UserError, match=rf"--manifest {manifest}: label 0 is class 'biking' "
                                        r"in one row and 'bunny' in another \(.*bigbuckbunny"
                                        r"\.mp4\): give each label one class_name"):
        extract_clips(manifest, str(tmp_path / 'store'), tiny_vae_dir)
    # a label no row names is None; rows without a class name record none
    gap = str(tmp_path / 'gap.csv')
    write_manifest([dict(path=BIKES, label=2, class_name='biking'),
                    dict(path=BUNNY, label=0)], gap)
    extract_clips(gap, str(tmp_path / 'gap'), tiny_vae_dir)
    assert LatentStore(str(tmp_path / 'gap')).index['meta']['classes'] == [None, None,
                                                                           'biking']
    plain = str(tmp_path / 'plain.csv')
    write_manifest([dict(path=BIKES, label=1), dict(path=BUNNY)], plain)
    extract_clips(plain, str(tmp_path / 'plain'), tiny_vae_dir)
    assert 'classes' not in LatentStore(str(tmp_path / 'plain')).index['meta']


def test_a_video_store_begun_before_class_names_were_recorded_goes_on(tmp_path, tiny_vae_dir,
                                                                      capsys):
    manifest = store_of(tmp_path, 'a', 'biking', 'bunny', tiny_vae_dir)
    out = str(tmp_path / 'stores' / 'a')
    index_file = os.path.join(out, 'index.json')
    with open(index_file) as f:
        index = json.load(f)
    del index['meta']['classes']  # as an older mmsora wrote it
    with open(index_file, 'w') as f:
        json.dump(index, f)
    capsys.readouterr()
    assert extract_clips(manifest, out, tiny_vae_dir)['complete']
    assert 'is complete' in capsys.readouterr().out


def test_odd_latent_sides_are_warned_of_at_extraction(tmp_path, tiny_vae_dir, capsys):
    """--size 34 with a factor-2 VAE made 17x17 latents without a word; training then
    stopped ('not a multiple of the patch size 2') and the store was made again."""
    manifest = str(tmp_path / 'clips.csv')
    write_manifest([dict(path=BIKES)], manifest)
    extract_clips(manifest, str(tmp_path / 'odd'), tiny_vae_dir, '--size', '34', '32')
    err = capsys.readouterr().err
    assert ('warning: --size 34x32 gives latents of 17x16 (the VAE factor 2): an odd side '
            'fits no DiT or VideoDiT patch (2, 4 or 8), and training on this store stops '
            '(input size not a multiple of the patch size); give sides that are multiples '
            'of 2 x the patch size (4 for a /2 model)') in err
    extract_clips(manifest, str(tmp_path / 'even'), tiny_vae_dir, '--size', '36', '32')
    assert 'warning' not in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the --size help says so too
        extract.parse_args(['--help'])
    assert 'patch size: for DiT /2 on an SD VAE (factor 8), multiples of 16' in ' '.join(
        capsys.readouterr().out.split())


def test_skipped_clips_of_one_video_are_one_entry(tmp_path, tiny_vae_dir, capsys):
    """--clips-per-video K named a short video K times, each clip with the same long
    reason, and the first 10 entries left no room for the other skipped inputs."""
    broken = tmp_path / 'broken.mp4'
    broken.write_bytes(b'\x00\x00\x00\x18ftypmp42 truncated')
    manifest = str(tmp_path / 'clips.csv')
    write_manifest([dict(path=BUNNY), dict(path=str(broken)), dict(path=BIKES)], manifest)
    extract_clips(manifest, str(tmp_path / 'store'), tiny_vae_dir, '--num-frames', '45',
                  '--frame-stride', '3', '--clips-per-video', '12')
    out = capsys.readouterr().out
    assert (f"skipped 24 unreadable or too short inputs: {BUNNY}: clips 1-12 of 12 (video "
            f"'{BUNNY}' has 132 frames but a clip of 45 frames at stride 3 needs 133; ") in out
    assert f'; {broken}: clips 1-12 of 12 (cannot read video' in out
    assert '(clip 2 of 12)' not in out


def test_skipped_entries_keep_clip_ranges_reasons_and_plain_inputs_apart():
    names = [f'v.mp4 (clip {k} of 20)' for k in (1, 2, 3, 5, 9, 10)] + ['w.mp4']
    why = ['short'] * 5 + ['other', 'broken']
    shards = [dict(skipped=names[:4], skipped_why=why[:4]),
              dict(skipped=names[4:], skipped_why=why[4:]),
              dict(skipped=['old.mp4 (clip 1 of 2)'])]  # (older stores kept no reasons)
    assert extract.skipped_inputs(shards) == (
        'skipped 8 unreadable or too short inputs: v.mp4: clips 1-3, 5, 9 of 20 (short) '
        'and clip 10 of 20 (other); w.mp4 (broken); old.mp4: clip 1 of 2')
