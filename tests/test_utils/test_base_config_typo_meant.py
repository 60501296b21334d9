"""A ``_base_`` path with a typo was 'its base ...: FileNotFoundError: [Errno 2] No such
file or directory: ...' with no 'did you mean', which a config path given on the
command line gets; and the config given was printed as written (``a/./my.py``)."""
import os

import pytest

from mmsora.utils.cli import UserError
from mmsora.utils.config_loading import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_base_not_found_is_said_with_the_configs_meant(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # (configs/ of the working directory is searched too)
    (tmp_path / 'my.py').write_text(
        f"_base_ = '{ROOT}/configs/dit_xl2_vide.py'\nmodel = dict(denoiser=dict(depth=2))\n")
    with pytest.raises(UserError) as info:
        load_config(f'{tmp_path}/./my.py')
    assert str(info.value) == (
        f'cannot load config {tmp_path}/my.py: its base configs/dit_xl2_vide.py: not '
        'found; did you mean configs/dit_xl2_video.py?')


def test_a_base_beside_the_config_is_meant_from_its_folder(tmp_path):
    (tmp_path / 'my_base.py').write_text('x = 1\n')
    (tmp_path / 'my.py').write_text("_base_ = ['./my_bsae.py']\n")
    with pytest.raises(UserError, match=rf'^cannot load config {tmp_path}/my.py: its base '
                                        rf'{tmp_path}/my_bsae.py: not found; did you mean '
                                        rf'{tmp_path}/my_base.py\?$'):
        load_config(str(tmp_path / 'my.py'))
