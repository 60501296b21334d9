"""Tiny inputs made by the tests: clips (one grey level; a moving square with its
manifest), a logger stub that keeps what it is told, and what a logger logs in a block."""
import contextlib
import logging
import os.path as osp

import numpy as np

from mmsora.datasets.manifest import write_manifest
from mmsora.utils.video_io import write_video


def make_clip(path, num_frames=2, value=0):
    """A tiny H.264 mp4 (16x16) of ``num_frames`` frames of one grey level at ``path``
    (a ``pathlib.Path``; its folder is made); returns the path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(str(path), np.full((num_frames, 16, 16, 3), value, np.uint8), fps=8)
    return str(path)


def moving_square_clip(data_dir, num_frames, height, width, top, size, step):
    """Write ``clip.mp4`` (25 fps): a ``size``-pixel red square, rows ``top`` to
    ``top + size``, starting at column 2 and moving ``step`` pixels right a frame; and
    an unlabelled manifest of it, ``clips.csv``, in ``data_dir``."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frames[i, top:top + size, 2 + step * i:2 + size + step * i] = (200, 60, 30)
    write_video(osp.join(str(data_dir), 'clip.mp4'), frames, fps=25)
    write_manifest([dict(path='clip.mp4')], osp.join(str(data_dir), 'clips.csv'))


class LineLogger:
    """A logger that keeps the lines, with their level: ``lines`` of (level, line)."""

    def __init__(self):
        self.lines = []

    def info(self, line):
        self.lines.append(('info', line))

    def warning(self, line):
        self.lines.append(('warning', line))

    def error(self, line):
        self.lines.append(('error', line))


@contextlib.contextmanager
def logged_messages(logger, level=logging.NOTSET):
    """The messages ``logger`` (a ``logging.Logger``: an ``MMLogger``, a runner's) logs
    at ``level`` or above inside the ``with`` block: a list, kept by a handler that is
    on the logger for the block only."""
    said = []

    class Keep(logging.Handler):
        def emit(self, record):
            said.append(record.getMessage())

    handler = Keep(level)
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
