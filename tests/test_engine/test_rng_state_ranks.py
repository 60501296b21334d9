"""RNGStateHook with several processes: every rank's RNG states go into the checkpoint
and each rank gets its own back on resume (2 gloo processes on CPU)."""
import os
import random

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmsora.engine.hooks import RNGStateHook
from tests.launch import free_port


class FakeRunner:
    _resume = True
    hooks = []


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # diff_rank_seed: each rank its own stream
        random.seed(100 + rank)
        hook, checkpoint = RNGStateHook(), {}
        hook.gather(FakeRunner())  # every rank, as where CheckpointHook saves next
        if rank == 0:  # mmengine saves on rank 0 only
            hook.before_save_checkpoint(FakeRunner(), checkpoint)
        objs = [checkpoint]
        dist.broadcast_object_list(objs, src=0)  # every rank loads the same file
        checkpoint = objs[0]
        expected = (torch.rand(3), random.random())  # what an uninterrupted run draws next
        torch.manual_seed(0)  # what a resumed process has before the states come back
        random.seed(0)
        hook.after_load_checkpoint(FakeRunner(), checkpoint)
        hook.before_train_iter(FakeRunner(), 0)
        got = (torch.rand(3), random.random())
        out[rank] = (len(checkpoint['meta']['rng_states']),
                     torch.equal(got[0], expected[0]) and got[1] == expected[1],
                     expected[0].tolist())
    finally:
        dist.destroy_process_group()


def test_each_rank_resumes_its_own_stream():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    assert out[0][:2] == (2, True) and out[1][:2] == (2, True)
    assert out[0][2] != out[1][2]  # the two ranks really had different streams


def test_single_process_checkpoints_stay_a_dict():
    hook, checkpoint = RNGStateHook(), {}
    hook.before_save_checkpoint(FakeRunner(), checkpoint)
    assert isinstance(checkpoint['meta']['rng_states'], dict)
    expected = torch.rand(2)
    hook.after_load_checkpoint(FakeRunner(), checkpoint)
    hook.before_train_iter(FakeRunner(), 0)
    assert torch.equal(torch.rand(2), expected)
