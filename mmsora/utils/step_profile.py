"""Where a training step's time goes: ``torch.profiler`` over a few steps, as text.

``tools/benchmark.py --profile DIR`` writes one file per model timed. Two tables: the
operators by their own time on the device (CUDA kernels launched under each operator;
absent on the CPU), and by their own time on the host (Python's dispatch and the
kernel launches: what the device waits on when the step is host-bound).
"""
from typing import Callable

import torch

__all__ = ['profile_steps']


def profile_steps(step: Callable[[], object], device: torch.device, steps: int = 2,
                  rows: int = 40) -> str:
    """Run ``step`` ``steps`` times under the profiler; return the operator tables."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.device(device).type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    averages = prof.key_averages()
    parts = [f'{steps} steps profiled on {torch.device(device)}; times are totals over '
             'them']
    if cuda:
        parts += ['\n== by self time on the device\n',
                  averages.table(sort_by='self_device_time_total', row_limit=rows)]
    parts += ['\n== by self time on the host\n',
              averages.table(sort_by='self_cpu_time_total', row_limit=rows)]
    return '\n'.join(parts)
