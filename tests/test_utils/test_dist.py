"""mmsora.utils.dist: the collective device and the end of a distributed run."""
import torch
import torch.distributed as dist

from mmsora.utils.dist import close_process_group, collective_device


def test_close_process_group_ends_a_run_and_is_harmless_outside_one(tmp_path):
    close_process_group()  # no group: nothing to do
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        assert collective_device() == torch.device('cpu')  # gloo
    finally:
        close_process_group()
    assert not dist.is_initialized()
