"""tools/extract_features.py over several processes: every rank gets a shard, the
ranks wait for each other as long as encoding takes, and srun's tasks are ranks
(walk-through q: a multi-process user)."""
import datetime
from types import SimpleNamespace
from unittest import mock

import torch

from tests.extract_tools import extract


def test_a_fresh_store_gives_every_rank_a_shard(image_folder, monkeypatch, tmp_path):
    """Shards are dealt out whole: 6 images in one default-size shard left 3 of 4 ranks
    with nothing (1000 captioned clips on 8 GPUs: 7 idle), waiting in the last barrier."""
    source = extract.ImageSource(image_folder, 16)
    assert len(source) == 7  # (one of them broken: skipped when read)
    for world, size in ((1, extract.SHARD_SIZE), (4, 2), (8, 1)):
        monkeypatch.setenv('WORLD_SIZE', str(world))
        args = SimpleNamespace(shard_size=None, text_encoder=None, out=str(tmp_path / 's'),
                               dtype='float16', store='moments', flip=False, vae='v',
                               video_vae=None, max_length=None, scale_factor=None)
        extract.check_out(args, source, {})
        assert args.shard_size == min(size, extract.SHARD_SIZE), world
        assert -(-len(source) // args.shard_size) >= min(world, len(source))
    args.shard_size = 5  # given: as given
    extract.check_out(args, source, {})
    assert args.shard_size == 5


def test_the_ranks_wait_for_each_other_as_long_as_encoding_takes(monkeypatch):
    """The ranks meet only at the end: NCCL's 10-minute default timeout ended the idle
    ranks' barrier while the others still encoded, and torchrun stopped them all."""
    monkeypatch.setenv('WORLD_SIZE', '2')
    with mock.patch.object(extract.dist, 'init_process_group') as init, \
            mock.patch.object(extract.dist, 'get_rank', return_value=1), \
            mock.patch.object(extract.dist, 'get_world_size', return_value=2):
        assert extract.init_dist('cpu') == (1, 2, torch.device('cpu'))
    assert init.call_args.kwargs['timeout'] >= datetime.timedelta(days=1)


def test_srun_tasks_are_ranks():
    """Under srun --ntasks 2 without torchrun each task encoded every shard into the
    same folder ('16 shards written by rank 0', twice)."""
    import os
    with mock.patch.dict(os.environ):  # (what the tool sets is undone after)
        for key in ('WORLD_SIZE', 'RANK', 'LOCAL_RANK'):
            os.environ.pop(key, None)
        os.environ.update(SLURM_NTASKS='2', SLURM_PROCID='1', SLURM_NODELIST='node1',
                          MASTER_ADDR='127.0.0.1')
        extract.adopt_slurm_tasks()
        assert (os.environ['WORLD_SIZE'], os.environ['RANK']) == ('2', '1')
        assert extract.launch_rank() == 1
        # under torchrun (WORLD_SIZE set) or a single task: left alone
        os.environ.update(WORLD_SIZE='4', RANK='3')
        extract.adopt_slurm_tasks()
        assert os.environ['RANK'] == '3'



def test_ctrl_c_says_what_is_kept_and_how_to_go_on(image_folder, tiny_vae_dir, tmp_path):
    """Ctrl-C printed a bare 'interrupted' on every rank."""
    import pytest

    from mmsora.datasets import LatentStoreWriter
    from mmsora.utils.cli import Interrupted
    from tests.extract_tools import run_extract
    real_write, calls = LatentStoreWriter.write_shard, []

    def ctrl_c(self, *args, **kwargs):  # at the second shard
        calls.append(args[0])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_write(self, *args, **kwargs)

    out = str(tmp_path / 'store')
    with mock.patch.object(LatentStoreWriter, 'write_shard', ctrl_c), \
            pytest.raises(Interrupted, match=r'^\(1 shard of 4 at .*store are kept: rerun '
                                             r'the same command to go on\)$') as info:
        run_extract(image_folder, out, tiny_vae_dir)
    assert not info.value.quiet
    assert run_extract(image_folder, out, tiny_vae_dir)['shards_written'] == 3
