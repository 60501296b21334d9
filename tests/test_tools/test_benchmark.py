"""tools/benchmark.py times real training steps of ours and diffusers' DiT and derives
its throughput figures from the analytic FLOP count."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))
import benchmark  # noqa: E402

from mmsora.models import DiT, dit_flops, dit_preset  # noqa: E402

SMALL = ['--model', 'DiT-S/8', '--input-size', '16', '--num-classes', '10',
         '--batch-size', '2', '--steps', '2', '--warmup', '1']


@pytest.mark.parametrize('impl', ['ours', 'diffusers'])
def test_worker_times_steps_and_counts_flops(impl):
    result = benchmark.run_worker(benchmark.parse_args(SMALL + ['--worker', impl]))
    assert result['impl'] == impl and result['step_ms'] > 0
    assert result['samples_per_s'] == pytest.approx(2 / (result['step_ms'] / 1e3))
    arch = dit_preset('DiT-S/8', input_size=16, num_classes=10)
    macs = dit_flops(**arch)
    # A training step is 3 forward passes of 2 FLOPs per multiply-accumulate.
    assert result['tflops_per_s'] == pytest.approx(
        3 * 2 * macs * 2 / (result['step_ms'] / 1e3) / 1e12)
    assert result['tokens_per_s'] == pytest.approx(result['samples_per_s'] * (16 // 8) ** 2)
    assert result['peak_mem_mb'] > result['rss_before_model_mb'] > 0
    # ours is the original DiT (one shared conditioning embedder); diffusers gives every
    # block its own, so it has more parameters at the same size.
    original = sum(p.numel() for p in DiT(**arch).parameters()) / 1e6
    if impl == 'ours':
        assert result['params_m'] == pytest.approx(original)
    else:
        assert result['params_m'] > original


def test_ema_option_updates_a_float32_average_after_each_step():
    """--ema M: the step ends with EMAHook's update (lerp by M towards the weights),
    as tools/train.py's does; without it there is none."""
    import torch
    args = benchmark.parse_args(SMALL + ['--ema', '0.25'])
    model, step, _, _ = benchmark.make_step(args, 'ours')
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert len(step.ema) == len(after) and {a.dtype for a in step.ema} == {torch.float32}
    for avg, b, a in zip(step.ema, before, after):
        torch.testing.assert_close(avg, b.lerp(a, 0.25))
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    assert benchmark.make_step(benchmark.parse_args(SMALL), 'ours')[1].ema is None


def test_driver_runs_both_in_their_own_processes(tmp_path, capsys):
    # --threads applies in the worker processes only.
    benchmark.main(SMALL + ['--baseline', 'diffusers', '--threads', '1',
                            '--json', str(tmp_path / 'b.json')])
    out = capsys.readouterr().out
    assert 'ratio ours/diffusers' in out
    data = json.loads((tmp_path / 'b.json').read_text())
    ours, base = data['results']
    assert (ours['impl'], base['impl']) == ('ours', 'diffusers')
    assert data['setup']['batch_size'] == 2 and data['setup']['threads'] == 1
    assert ours['params_m'] < base['params_m']


def test_config_denoiser_and_checkpointing(tmp_path):
    cfg_file = tmp_path / 'tiny.py'
    cfg_file.write_text(
        "model = dict(type='LatentDiffusion', denoiser=dict(type='DiT', input_size=8, "
        "patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, "
        "num_classes=10))\n")
    args = benchmark.parse_args([str(cfg_file), '--batch-size', '2', '--steps', '1',
                                 '--warmup', '1', '--grad-checkpointing', '1',
                                 '--worker', 'ours'])
    assert benchmark.denoiser_cfg(args)['hidden_size'] == 32
    result = benchmark.run_worker(args)
    assert result['params_m'] < 0.1 and result['loss'] > 0
    assert result['cpu_ms'] > 0 and result['page_faults'] >= 0


def test_interleave_takes_turns_in_one_process(tmp_path, capsys, monkeypatch):
    order = []
    make_step = benchmark.make_step

    def recording(args, impl):  # the real step, noting who ran
        model, step, cfg, arch = make_step(args, impl)

        def noted():
            order.append(impl)
            return step()
        return model, noted, cfg, arch
    monkeypatch.setattr(benchmark, 'make_step', recording)
    benchmark.main(SMALL + ['--baseline', 'diffusers', '--interleave', '--steps', '3',
                            '--json', str(tmp_path / 'i.json')])
    out = capsys.readouterr().out
    # ABBA: one warm-up pair, then three timed ones
    assert order == ['ours', 'diffusers', 'diffusers', 'ours', 'ours', 'diffusers',
                     'diffusers', 'ours']
    assert 'samples/s ratio ours/diffusers: best' in out and 'step pairs' in out
    record = json.loads((tmp_path / 'i.json').read_text())
    times = record['step_ms']
    assert len(times['ours']) == len(times['diffusers']) == 3
    assert all(v > 0 for v in times['ours'] + times['diffusers'])
    assert all(v > 0 for v in record['cpu_ms']['ours'] + record['cpu_ms']['diffusers'])
    assert all(isinstance(v, int) and v >= 0 for v in record['page_faults']['ours'])
    assert 'minor page faults' in out
    with pytest.raises(SystemExit, match='--baseline'):
        benchmark.main(SMALL + ['--interleave'])


USAGE_PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import benchmark
faults, cpu = benchmark._usage()
block = torch.ones(64 * 2 ** 20, dtype=torch.uint8)
spin = 0
while benchmark._usage()[1] - cpu < 0.2:
    spin += 1
end_faults, end_cpu = benchmark._usage()
print(end_faults - faults, end_cpu - cpu, int(block.sum()))
"""


def test_usage_counts_fresh_pages_and_cpu_time():
    """benchmark.py's page_faults and cpu_ms columns: first touches of fresh memory
    and the process's CPU time. In a fresh process, as benchmark.py's workers are: in
    a long-lived one, the allocator may hand back pages it already touched."""
    import subprocess
    nbytes, page = 64 * 2 ** 20, 4096
    try:  # with transparent huge pages always on, a fault maps 2 MiB
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            page = 2 ** 21 if '[always]' in f.read() else page
    except OSError:
        pass
    # A fresh mapping (above glibc's mmap threshold), written page by page, by torch's
    # CPU allocator as in the steps benchmark.py times (numpy would advise huge pages
    # for it: 32 faults).
    out = subprocess.run([sys.executable, '-c', USAGE_PROBE, osp.join(ROOT, 'tools')],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    faults, cpu, total = out.stdout.split()
    assert int(faults) >= 0.5 * nbytes / page and int(total) == nbytes
    assert float(cpu) >= 0.2
