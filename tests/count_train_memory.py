"""Run tools/train.py with every tensor storage counted (LiveTensorBytes), and write
per rank, for each training iteration, the bytes alive when it starts and the peak
within it, to ``$COUNT_MEMORY_OUT.RANK.json``. Used by
tests/test_utils/test_zero_memory.py and tests/test_engine/test_fsdp_train.py (under
torchrun) and tests/test_utils/test_memory_estimate.py (one process); the arguments are
tools/train.py's."""
import json
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import mmengine.runner.loops as loops  # noqa: E402

from mmsora.utils.memory_estimate import LiveTensorBytes  # noqa: E402
from tests.launch import skip_deepspeed_shm_build  # noqa: E402
from tools import train  # noqa: E402


def main():
    skip_deepspeed_shm_build()
    mem = LiveTensorBytes()
    records = []
    run_iter = loops.IterBasedTrainLoop.run_iter

    def counted_run_iter(self, data_batch):
        before = mem.current  # the batch included: it is loaded before the call
        mem.peak = mem.current
        run_iter(self, data_batch)
        records.append(dict(iter=self._iter, before=before, peak=mem.peak))

    loops.IterBasedTrainLoop.run_iter = counted_run_iter
    try:
        with mem:
            train.main(sys.argv[1:])
    finally:
        rank = os.environ.get('RANK', '0')
        with open(f"{os.environ['COUNT_MEMORY_OUT']}.{rank}.json", 'w') as f:
            json.dump(records, f)


if __name__ == '__main__':
    main()
