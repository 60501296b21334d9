"""tools/test.py and tools/infer.py started by torchrun without --launcher: every
process sampled everything (test.py's into the same shard files, where one stopped on
another's .tmp.npz; infer.py's into the same mp4s). They refuse in one line, before
any model is built."""
import os.path as osp

import pytest

import mmsora.apis
from tests.cli_helpers import refused
from tools import infer
from tools import test as test_tool

CONFIG = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
VIDEO_CONFIG = 'configs/video_dit/video_dit_tiny2_1xb8_1500_moving_shapes16.py'
MISSING = '/nonexistent/iter_10.pth'  # never read: refused before
WITHOUT_LAUNCHER = ('started as one of 2 torchrun processes without --launcher: add '
                    '--launcher pytorch (each process then does its share)')


@pytest.fixture
def torchrun_rank1(monkeypatch):
    """Process 1 of 2 of torchrun's; building a model or a process group fails."""
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('LOCAL_RANK', '1')

    def built(*args, **kwargs):
        raise AssertionError('the model was built (or the processes joined)')
    monkeypatch.setattr(mmsora.apis, 'init_model', built)
    monkeypatch.setattr(mmsora.apis, 'init_sampling_processes', built)


def test_test_py_refuses_torchrun_without_launcher(torchrun_rank1, repo_root, tmp_path):
    config = osp.join(repo_root, CONFIG)
    assert refused(test_tool.main, [config, MISSING, '--out',
                                    str(tmp_path / 's.npz')]) == WITHOUT_LAUNCHER
    assert refused(test_tool.main, [config, MISSING]) == WITHOUT_LAUNCHER
    # with --launcher it goes on to join the processes (an evaluation section given:
    # a config without one is refused before that)
    with pytest.raises(AssertionError, match='the processes joined'):
        test_tool.main([config, MISSING, '--launcher', 'pytorch', '--evaluation',
                        osp.join(repo_root, 'configs/_base_/evaluation/fid50k_imagenet256.py')])


def test_infer_refuses_torchrun_without_launcher(torchrun_rank1, repo_root, tmp_path):
    config = osp.join(repo_root, CONFIG)
    assert refused(infer.main, [config, '--checkpoint', MISSING, '--out',
                                str(tmp_path / 's.npz')]) == WITHOUT_LAUNCHER
    with pytest.raises(AssertionError, match='the processes joined'):
        infer.main([config, '--checkpoint', MISSING, '--out', str(tmp_path / 's.npz'),
                    '--launcher', 'pytorch'])


@pytest.mark.parametrize('launcher', [[], ['--launcher', 'pytorch']])
@pytest.mark.parametrize('out', ['grid.png', 'clips.mp4', None])
def test_infer_names_a_grid_or_mp4s_one_process_job_under_torchrun(
        torchrun_rank1, repo_root, tmp_path, launcher, out):
    """A grid or mp4s are written whole by one process: under torchrun, with or without
    --launcher (which takes only --out NAME.npz), say to run it without torchrun."""
    config = VIDEO_CONFIG if out == 'clips.mp4' else CONFIG
    argv = [osp.join(repo_root, config), '--checkpoint', MISSING, *launcher]
    if out:
        argv += ['--out', str(tmp_path / out)]
    shown = f'--out {tmp_path / out}' if out else 'no --out'
    assert refused(infer.main, argv) == (
        f'started as one of 2 torchrun processes with {shown}: a grid or mp4s are one '
        "process's job: run it without torchrun, or sample many with --out NAME.npz "
        '--launcher pytorch')


def test_infer_launcher_and_sample_dir_without_npz_in_one_process(repo_root, tmp_path,
                                                                  monkeypatch):
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    config = osp.join(repo_root, CONFIG)
    assert refused(infer.main, [config, '--checkpoint', MISSING, '--launcher', 'slurm',
                                '--out', 'g.png']) == (
        "--launcher slurm is for mass sampling into --out NAME.npz; with --out g.png (a "
        "grid or mp4s, one process's job) run it without --launcher")
    assert refused(infer.main, [config, '--checkpoint', MISSING, '--sample-dir',
                                str(tmp_path / 'd')]) == (
        '--sample-dir is for mass sampling: give --out NAME.npz')
