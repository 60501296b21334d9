"""A finished mass sampling's .npz (hours of samples; its shards are gone once it is
written) was sampled over and replaced without a word by the same command run again,
or by another run given its name. tools/infer.py and tools/test.py refuse it in one
line, before the model loads."""
import os.path as osp

import numpy as np
import pytest

import mmsora.apis
from tests.cli_helpers import refused
from tools import infer
from tools import test as test_tool

CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
MISSING = '/nonexistent/iter_10.pth'  # never read: refused before
EVALUATION = 'configs/_base_/evaluation/fid50k_imagenet256.py'  # (the config has none)


@pytest.fixture
def finished(tmp_path, monkeypatch):
    """A finished run's samples.npz; building a model fails."""
    out = tmp_path / 'samples.npz'
    np.savez(out, arr_0=np.zeros((2, 8, 8, 3), np.uint8), arr_1=np.zeros(2, np.int64))

    def built(*args, **kwargs):
        raise AssertionError('the model was built')
    monkeypatch.setattr(mmsora.apis, 'init_model', built)
    return str(out)


@pytest.mark.parametrize('tool', ['infer', 'test'])
def test_a_finished_npz_is_not_sampled_over(finished, repo_root, tool):
    config = osp.join(repo_root, CONFIG)
    argv = ([config, '--checkpoint', MISSING] if tool == 'infer' else
            [config, MISSING, '--evaluation', EVALUATION])
    main = infer.main if tool == 'infer' else test_tool.main
    before = open(finished, 'rb').read()
    assert refused(main, [*argv, '--out', finished]) == (
        f'--out {finished} exists: the samples of a finished run are not sampled over; '
        'delete it, or give another name')
    assert open(finished, 'rb').read() == before
    # another name goes on (to the model, which this test does not build)
    with pytest.raises(AssertionError, match='the model was built'):
        main([*argv, '--out', finished.replace('samples', 'more')])
