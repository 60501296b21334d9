"""The real clips tests may read: ../shared/data/videos beside the repository."""
import os.path as osp

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
VIDEOS = osp.join(osp.dirname(REPO_ROOT), 'shared', 'data', 'videos')
BIKES = osp.join(VIDEOS, 'bikes.mp4')
BUNNY = osp.join(VIDEOS, 'bigbuckbunny.mp4')
needs_videos = pytest.mark.skipif(
    not (osp.isfile(BIKES) and osp.isfile(BUNNY)),
    reason=f'test videos not found in {VIDEOS} (../shared/data/videos)')
