"""tools/train.py checks the model config once a start: check_model_config (unknown
types too) before the build on the meta device, and check_training_keys the rest (it
checked the model again, without its types)."""
import os.path as osp

import pytest

import mmsora.utils.config_keys as config_keys
from mmsora.utils.cli import UserError
from tests.tiny_models import DEMO, TINY_TRAIN
from tools.train import build_train_config, parse_args

pytestmark = pytest.mark.usefixtures('kept_environ')  # (tools/train.py sets LOCAL_RANK)


def test_the_model_is_checked_once_per_start(repo_root, tmp_path, monkeypatch):
    calls = []
    check = config_keys.check_model_config

    def counted(model, *args, **kwargs):
        calls.append(kwargs.get('types', True))
        return check(model, *args, **kwargs)

    monkeypatch.setattr(config_keys, 'check_model_config', counted)
    build_train_config(parse_args([osp.join(repo_root, DEMO), '--work-dir',
                                   str(tmp_path / 'w'), '--cfg-options', *TINY_TRAIN]))
    assert calls == [True]  # (its types too: [True, False] before)


@pytest.mark.parametrize('option, said', [
    ('model.denoiser.type=DiTT', "model.denoiser: unknown type 'DiTT' in the model "
                                 'registry; did you mean DiT'),
    ('model.denoiser.depth=three', "model.denoiser.depth must be a whole number (int), "
                                   "got 'three' (a str)"),
])
def test_the_one_check_still_names_the_models_entries(repo_root, tmp_path, option, said):
    with pytest.raises(UserError) as info:
        build_train_config(parse_args([osp.join(repo_root, DEMO), '--work-dir',
                                       str(tmp_path / 'w'), '--cfg-options', *TINY_TRAIN,
                                       option]))
    assert str(info.value).startswith(said)
    assert not (tmp_path / 'w').exists()
