"""SampleVisualizationHook says, once a run, that LocalVisBackend did not write its
samples picture: mmengine ignores what cv2.imwrite says (False, no exception), so a
full disk lost the pictures without a word."""
import glob
import os
import os.path as osp
import shutil
from types import SimpleNamespace

import pytest
import torch
from mmengine.visualization import Visualizer, vis_backend

from mmsora.engine.hooks import SampleVisualizationHook


class Logger:
    """The runner's logger: keeps the warnings and the info lines."""

    def __init__(self):
        self.warnings, self.infos = [], []

    def warning(self, msg):
        self.warnings.append(msg)

    def info(self, msg):
        self.infos.append(msg)


def log_pictures(save_dir, steps, spoil=None):
    """One hook's pictures of ``steps`` logged through a real LocalVisBackend in
    ``save_dir`` (``spoil(path)`` first, on each picture's file); returns the logger
    and the PNG paths."""
    visualizer = Visualizer(name='lost_picture', save_dir=str(save_dir),
                            vis_backends=[dict(type='LocalVisBackend')])
    folder = osp.join(str(save_dir), 'vis_data', 'vis_image')
    os.makedirs(folder, exist_ok=True)
    paths = [osp.join(folder, f'samples_{step}.png') for step in steps]
    for path in paths if spoil else ():
        spoil(path)
    runner = SimpleNamespace(visualizer=visualizer, logger=Logger(), log_dir=str(save_dir),
                             cfg={})
    hook = SampleVisualizationHook(interval=1, num_samples=2)
    for step in steps:
        hook._log(runner, torch.zeros(2, 3, 4, 4), [0, 1], step)
    return runner.logger, paths


def warning(step, path):
    return (f'Iter(sample) [{step}] the samples picture {path} was not written (is the '
            'disk full?): free space to see the next ones; training goes on (said once a '
            'run)')


def full_disk(path):
    os.symlink('/dev/full', path)  # its writes fail as a full disk's do (ENOSPC)


def folder_in_its_place(path):
    os.mkdir(path)  # cv2.imwrite cannot open it: False


@pytest.mark.parametrize('spoil', [full_disk, folder_in_its_place])
def test_a_picture_not_written_is_one_warning_a_run(tmp_path, spoil):
    if spoil is full_disk and not osp.exists('/dev/full'):
        pytest.skip('no /dev/full here')
    logger, paths = log_pictures(tmp_path, [2, 4], spoil)
    assert logger.warnings == [warning(2, paths[0])]
    assert len(logger.infos) == 2  # sampling goes on


def closing(step, missing=None):
    """The line that closes a sampling of 2 samples (``missing``: their picture, not
    written locally)."""
    lost = f' (local pictures written: 0 of 1; missing: {missing})' if missing else ''
    return f'Iter(sample) [{step}] 2 samples logged to the visualizer{lost}'


def test_the_closing_line_says_the_pictures_not_written(tmp_path):
    """After the warning (said once), each sampling's closing line said '2 samples
    logged to the visualizer' of pictures its local backend had not written."""
    logger, paths = log_pictures(tmp_path, [2, 4], folder_in_its_place)
    assert logger.infos == [closing(2, paths[0]), closing(4, paths[1])]
    logger, _ = log_pictures(tmp_path / 'room', [2, 4])
    assert logger.infos == [closing(2), closing(4)]


def test_a_picture_written_is_no_warning(tmp_path):
    logger, paths = log_pictures(tmp_path, [2, 4])
    assert logger.warnings == [] and len(logger.infos) == 2
    assert all(open(p, 'rb').read(4) == b'\x89PNG' for p in paths)
    # over an older picture of the same name: written again, no warning
    os.makedirs(tmp_path / 'again' / 'vis_data' / 'vis_image')
    old = str(tmp_path / 'again' / 'vis_data' / 'vis_image' / 'samples_2.png')
    shutil.copy(paths[0], old)
    os.utime(old, ns=(0, 0))
    assert log_pictures(tmp_path / 'again', [2])[0].warnings == []
    assert os.stat(old).st_mtime_ns > 0


def test_an_older_picture_left_as_it_was_is_a_warning(tmp_path, monkeypatch):
    """A write that failed before touching the file (cv2.imwrite False) leaves the
    older picture of that name, whole: it was not written all the same."""
    logger, paths = log_pictures(tmp_path, [2])
    assert logger.warnings == []
    monkeypatch.setattr(vis_backend.cv2, 'imwrite', lambda *args: False)
    assert log_pictures(tmp_path, [2])[0].warnings == [warning(2, paths[0])]


def test_a_training_run_says_it_once(repo_root, tmp_path, monkeypatch):
    """Through a real run, sampling at iterations 2 and 4 on a full disk."""
    from mmengine.runner import Runner

    from tests.tiny_models import tiny_cfg

    def full(path, image, *args):  # what a full disk leaves: an empty file, and False
        open(path, 'wb').close()
        return False
    monkeypatch.setattr(vis_backend.cv2, 'imwrite', full)
    cfg = tiny_cfg(repo_root, tmp_path / 'full', 4, 'sample_cfg.num_steps=2')
    cfg.custom_hooks = [dict(type='SampleVisualizationHook', interval=2, num_samples=1)]
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 4
    log = open(glob.glob(str(tmp_path / 'full' / '*' / '*.log'))[0]).read()
    lost = [line for line in log.splitlines() if 'was not written' in line]
    assert len(lost) == 1, lost
    assert lost[0].endswith(warning(2, osp.join(runner.log_dir, 'vis_data', 'vis_image',
                                                'samples_2.png')))
    picture = osp.join(runner.log_dir, 'vis_data', 'vis_image', 'samples_4.png')
    assert ('Iter(sample) [4] 1 samples logged to the visualizer (local pictures written: '
            f'0 of 1; missing: {picture})') in log
