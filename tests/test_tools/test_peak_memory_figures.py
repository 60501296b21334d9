"""The benchmarks' peak memory is this program's and is named for what it is:
tools/benchmark.py's and tools/stable_cascade_cost.py's workers read Linux's VmHWM,
not ``ru_maxrss``, which a process keeps across ``exec`` (a worker started by a larger
process reported that process's memory); tools/benchmark_sampling.py names its column
and JSON as tools/benchmark.py does, and tools/gpu_benchmarks.py's summary says which
peak it shows."""
import json
import math
import os
import os.path as osp
import resource
import subprocess
import sys

import pytest
import torch

from mmsora.utils import process_memory
from tests.tiny_models import tiny_dit_config
from tools import benchmark_sampling, gpu_benchmarks

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
BALLAST_MIB = 1536  # far above what the tiny workers below reach (about 500 MiB)

# The parent holds BALLAST_MIB of written (resident) memory, then becomes the worker.
EXEC_WITH_BALLAST = """import os, sys
ballast = b'x' * ({mib} << 20)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""

pytestmark = pytest.mark.skipif(not osp.exists('/proc/self/status'),
                                reason="reads Linux's /proc")


def exec_after_ballast(tmp_path, argv) -> str:
    """The stdout of ``python argv`` run by exec from a process holding the ballast."""
    script = tmp_path / 'parent.py'
    script.write_text(EXEC_WITH_BALLAST.format(mib=BALLAST_MIB))
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, str(script), *argv], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_benchmark_worker_peak_leaves_out_the_parents_memory(tmp_path):
    config = tiny_dit_config(tmp_path)  # (DiT-S/8 of BENCH_SMALL peaks near 1 GiB)
    stdout = exec_after_ballast(tmp_path, [
        osp.join(ROOT, 'tools', 'benchmark.py'), config, '--batch-size', '2', '--steps',
        '1', '--warmup', '0', '--device', 'cpu', '--threads', '1', '--worker', 'ours'])
    line = next(x for x in stdout.splitlines() if x.startswith('BENCHMARK_RESULT '))
    result = json.loads(line.split(' ', 1)[1])
    # ru_maxrss gave at least the parent's BALLAST_MIB
    assert result['rss_before_model_mb'] < result['peak_mem_mb'] < BALLAST_MIB
    assert result['peak_mem_kind'] == 'rss' and result['peak_rss_source'] == 'VmHWM'


def test_stable_cascade_cost_peak_growth_leaves_out_the_parents_memory(tmp_path):
    stdout = exec_after_ballast(tmp_path, [
        osp.join(ROOT, 'tools', 'stable_cascade_cost.py'), '--worker', 'VideoDiT-XL/2',
        '--measure-pixels', '32', '--frames', '2', '--steps', '1'])
    result = json.loads(stdout.split('RESULT ', 1)[1])
    # about 170 MiB (weights, gradients, AdamW's state); ru_maxrss: the ballast less
    # the RSS before the steps, about 1 GiB
    assert 0 < result['peak_rss_growth_mb'] < 500
    assert result['peak_rss_source'] == 'VmHWM'


def test_without_proc_the_peak_is_ru_maxrss_and_says_so(monkeypatch):
    def no_proc(*args, **kwargs):
        raise FileNotFoundError('/proc/self/status')
    monkeypatch.setattr(process_memory, 'open', no_proc, raising=False)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    value, source = process_memory.peak_rss_figure()
    assert source == 'ru_maxrss' and value == pytest.approx(maxrss, rel=0.05)
    assert process_memory.peak_memory(torch.device('cpu')) == dict(
        peak_mem_mb=pytest.approx(maxrss, rel=0.05), peak_mem_kind='rss',
        peak_rss_source='ru_maxrss')
    assert math.isnan(process_memory.rss_mb())  # as documented


@pytest.mark.usefixtures('malloc_calls')
def test_sampling_names_its_peak_memory_as_the_training_benchmark(tmp_path, capsys):
    """benchmark_sampling.py's 'peak MB' was RSS on the CPU and CUDA's allocated peak
    on a GPU under one name."""
    out = tmp_path / 'r.json'
    benchmark_sampling.main(['--model', 'DiT-S/2', '--input-size', '8', '--batch-size',
                             '1', '--steps', '2', '--repeats', '1', '--precision', 'fp32',
                             '--threads', '1', '--device', 'cpu', '--json', str(out)])
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[7] == 'peak_rss_MiB' and 'MB' not in header
    row = json.loads(out.read_text())['results'][0]
    assert row['peak_mem_kind'] == 'rss' and row['peak_rss_source'] == 'VmHWM'
    end = lines[1].index('peak_rss_MiB') + len('peak_rss_MiB')  # right-aligned under it
    assert lines[2][:end].split()[-1] == f"{row['peak_mem_mb']:.0f}"
    assert lines[2][end:end + 2] == '  '
    assert process_memory.peak_mem_header(['cuda_allocated']) == 'peak_cuda_allocated_MiB'
    assert process_memory.peak_mem_header(['rss', 'cuda_allocated']) == 'peak_mem_MiB'
    assert process_memory.peak_mem_header([None]) == 'peak_mem_MiB'


def test_gpu_summary_says_which_peak():
    rows = [dict(impl='ours', samples_per_s=10.0, peak_mem_mb=2048.0,
                 peak_mem_kind='cuda_allocated'),
            dict(precision='bf16', samples_per_s=5.0, peak_mem_mb=1024.0,
                 peak_mem_kind='rss'),
            dict(impl='ours', samples_per_s=10.0, peak_mem_mb=512.0)]  # recorded before
    lines = gpu_benchmarks.summary_rows({'b': dict(rc=0, result=dict(results=rows))})
    assert [line.split('peak ')[1] for line in lines] == [
        'allocated 2.00 GiB', 'RSS 1.00 GiB', '0.50 GiB']


def no_proc_open(monkeypatch):
    """process_memory as on a system without /proc: its /proc files cannot be opened."""
    def opener(path, *args, **kwargs):
        if str(path).startswith('/proc/'):
            raise FileNotFoundError(2, 'No such file or directory', str(path))
        return open(path, *args, **kwargs)
    monkeypatch.setattr(process_memory, 'open', opener, raising=False)


@pytest.mark.usefixtures('malloc_calls')
def test_without_proc_sampling_runs_and_calls_its_peaks_lifetime_ones(monkeypatch, tmp_path,
                                                                       capsys):
    """Without /proc the peak could not be reset: benchmark_sampling.py died at the reset
    before its first precision (FileNotFoundError: /proc/self/clear_refs), and an unreset
    ru_maxrss would have passed for each precision's own peak."""
    assert process_memory.reset_peak_rss() is True
    no_proc_open(monkeypatch)
    assert process_memory.reset_peak_rss() is False
    out = tmp_path / 'r.json'
    results = benchmark_sampling.main([
        '--model', 'DiT-S/2', '--input-size', '8', '--batch-size', '1', '--steps', '2',
        '--repeats', '1', '--precision', 'fp32', 'bf16', '--threads', '1', '--device', 'cpu',
        '--json', str(out)])
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    lifetime = 'ru_maxrss (not reset: a peak since the process started)'
    assert json.loads(out.read_text())['results'] == results
    for row in results:
        assert row['peak_rss_source'] == lifetime and row['peak_mem_kind'] == 'rss'
    peaks = [row['peak_mem_mb'] for row in results]  # the process's: never lower
    assert peaks == sorted(peaks) and peaks[-1] == pytest.approx(maxrss, rel=0.05)
    err = capsys.readouterr().err
    assert ("note: peak_rss_MiB is a peak since the process started, not each precision's "
            '(no /proc/self/clear_refs to reset it): run one --precision at a time for its '
            'own\n') in err


def test_stable_cascade_cost_growth_leaves_out_what_came_before_the_steps(monkeypatch):
    """measure_step's 'growth during the steps' took VmHWM without resetting it: a higher
    peak while the model was built (here BALLAST_MIB, written then freed) counted."""
    from tools import stable_cascade_cost
    build = stable_cascade_cost.build

    def build_then_peak(cfg, pixels):
        model = build(cfg, pixels)
        ballast = b'x' * (BALLAST_MIB << 20)  # resident, then given back to the system
        del ballast
        return model
    monkeypatch.setattr(stable_cascade_cost, 'build', build_then_peak)
    with torch.random.fork_rng():  # (measure_step seeds torch)
        result = stable_cascade_cost.measure_step('VideoDiT-XL/2', 32, 2, 1)
    # about 170 MiB (weights, gradients, AdamW's state); unreset: above BALLAST_MIB
    assert 0 < result['peak_rss_growth_mb'] < 500
    assert result['peak_rss_source'] == 'VmHWM'
