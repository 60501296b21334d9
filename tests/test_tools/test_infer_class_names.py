"""tools/infer.py's --labels by class name, read from the latent store the run trains
on (meta.classes, as extract_features.py records class folders), and the names in the
clips' files: a UCF-101 user mapped ids to folder names by hand."""
import os.path as osp

import numpy as np
import pytest

from mmsora.datasets import LatentStoreWriter
from mmsora.utils.cli import UserError
from tests.test_tools.test_infer_prompts import VIDEO_CONFIG, video_weights  # noqa: F401
from tools import infer

MISSING = '/nonexistent/iter_10.pth'  # read only after the checks
CLASSES = ['Biking', 'Diving', 'golden retriever', 'PlayingGuitar']


def write_store(root, classes):
    """A finished one-shard store of clips of the demo's size, naming ``classes``."""
    writer = LatentStoreWriter(str(root), 2, (3, 4, 16, 16),
                               meta=dict(num_frames=4, classes=classes))
    writer.write_shard(0, np.zeros((2, 1, 2, 3, 4, 16, 16), np.float32), [0, 1])
    writer.finalize()


def on_store(tmp_path, store='store'):
    """--cfg-options that make the demo train on ``tmp_path/store``."""
    return ['--cfg-options', 'train_dataloader.dataset.type=PackedLatentDataset',
            f'train_dataloader.dataset.data_root={tmp_path}',
            f'train_dataloader.dataset.store={store}']


def refused(argv) -> str:
    with pytest.raises(UserError) as info:
        infer.main(argv)
    return str(info.value)


def test_an_all_digit_label_stays_an_id():
    args = infer.parse_args(['run', '--labels', '207', 'Biking', 'random', '-1'])
    assert args.labels == [207, 'Biking', 'random', -1]


def test_class_names_sample_and_name_the_clips(repo_root, tmp_path, video_weights, capsys):
    write_store(tmp_path / 'store', CLASSES)
    infer.main([osp.join(repo_root, VIDEO_CONFIG), '--checkpoint', video_weights,
                '--steps', '1', '--device', 'cpu', '--labels', 'golden retriever', '1',
                '--out', str(tmp_path / 'clips') + '/', '--gif', *on_store(tmp_path)])
    assert sorted(p.name for p in (tmp_path / 'clips').iterdir()) == [
        'sample_000_label2_golden_retriever.gif', 'sample_000_label2_golden_retriever.mp4',
        'sample_001_label1_Diving.gif', 'sample_001_label1_Diving.mp4']
    out = capsys.readouterr().out
    assert 'labels [2, 1] (golden retriever, Diving)' in out
    assert 'sample_001_label1_Diving.gif' in out


def test_a_name_the_store_lacks_names_the_close_ones(repo_root, tmp_path):
    write_store(tmp_path / 'store', CLASSES)
    config = osp.join(repo_root, VIDEO_CONFIG)
    assert refused([config, '--checkpoint', MISSING, '--labels', '0', 'biking',
                    *on_store(tmp_path)]) == (
        "--labels 'biking': the run's latent store records no class of that name (4 "
        "classes; close: 'Biking', 'Diving'): give one of its class names, a class id or "
        "'random'")
    assert refused([config, '--checkpoint', MISSING, '--labels', 'Skydiving',
                    *on_store(tmp_path)]).startswith(
        "--labels 'Skydiving': the run's latent store records no class of that name (4 "
        "classes; close: 'Diving'")


def test_names_where_the_classes_are_not_known(repo_root, tmp_path):
    config = osp.join(repo_root, VIDEO_CONFIG)
    assert refused([config, '--checkpoint', MISSING, '--labels', 'Biking']) == (
        "--labels 'Biking': class names need the class names of the latent store the run "
        'trains on, and this run trains on no latent store (train_dataloader.dataset): '
        "give class ids (or 'random')")
    gone = osp.join(str(tmp_path), 'store')
    assert refused([config, '--checkpoint', MISSING, '--labels', 'Biking',
                    *on_store(tmp_path)]) == (
        "--labels 'Biking': class names need the class names of the latent store the run "
        f"trains on, and its latent store {gone} is not there: give class ids (or 'random')")
    write_store(tmp_path / 'store', None)  # (an older mmsora's video store)
    assert refused([config, '--checkpoint', MISSING, '--labels', 'Biking',
                    *on_store(tmp_path)]).endswith(
        f"its latent store {gone} records no class names: give class ids (or 'random')")


def test_ids_keep_their_file_names_without_class_names(repo_root, tmp_path, video_weights):
    infer.main([osp.join(repo_root, VIDEO_CONFIG), '--checkpoint', video_weights,
                '--steps', '1', '--device', 'cpu', '--labels', '3',
                '--out', str(tmp_path / 'clips') + '/', *on_store(tmp_path)])
    assert [p.name for p in (tmp_path / 'clips').iterdir()] == ['sample_000_label3.mp4']


def test_several_stores_name_their_labels_together(tmp_path):
    """As PackedLatentDataset compares them: a manifest's store may name some labels."""
    from mmengine.config import Config

    from mmsora.apis.class_names import file_safe, run_classes
    write_store(tmp_path / 'a', ['Biking', None])
    write_store(tmp_path / 'b', [None, 'Diving', 'golden retriever'])
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='PackedLatentDataset', data_root=str(tmp_path), store=['a', 'b']))))
    assert run_classes(cfg) == (['Biking', 'Diving', 'golden retriever'], '')
    # (a '/' made a folder of the clip's name)
    assert [file_safe(n) for n in ('golden retriever', 'AC/DC', ' x? ')] == [
        'golden_retriever', 'AC_DC', 'x']
