"""The GPU figures of docs/benchmarks.md, measured in one run.

    python tools/gpu_benchmarks.py OUT_DIR [--only NAME ...] [--time-budget S] [--dry-run]
                                   [--allow-cpu]

Runs, one after the other (each in its own process group, each with a time limit), the
commands of :data:`PLAN`:
- DiT-XL/2 256 px training steps in bf16 with the EMA at batch 32 / 128 / 256 (img/s,
  MFU, peak memory), and against diffusers' DiT at batch 128;
- the 16x256x256 VideoDiT-XL/2 step of the 24 GB preset capped at 23.5 GiB (a 24 GB card
  less the CUDA context);
- the memory estimate of that preset at the checkpointing of the 24 / 48 / 80 GB presets
  (every block, every 2nd, none) and selective against the allocator's peak;
- the 48 GB preset's step (every 2nd block recomputed) and the same with selective
  checkpointing (img/s, peak memory);
- a ZeRO-2 run of the demo at DiT-XL/2's widths, its logged peak against the DeepSpeed
  estimate;
- DiT-XL/2 at batch 256 without the EMA, at batch 32 without the loss guard and
  without the EMA, and at batch 256 with ``torch.compile``;
- the memory estimate of the 24 GB preset with 8 micro-batches per step (gradient
  accumulation) against the allocator's peak;
- the memory estimate of the 480p, 5 s config and of the Stable Cascade lite video
  config at 1 and 2 clips against the allocator's peak;
- a profile of DiT-XL/2's step at batch 32 and 256 (``OUT_DIR/NAME/ours.txt``);
- the tests that take another path on a GPU (:data:`GPU_TESTS`): ZeRO-2 and ZeRO-3
  runs that train and resume exactly, and no host sync in the diffusion's steps.

Everything goes into two files: ``OUT_DIR/log.txt`` (every command and its output) and
``OUT_DIR/summary.json`` (per command: the command, exit code, seconds, and the JSON it
wrote); the main figures are printed at the end. A command that fails or times out is
recorded and the run goes on; the exit code is 1 when one did. It needs a CUDA device
(``--allow-cpu`` to try the plan without one) and mmengine, mmcv-lite, diffusers and
DeepSpeed beside torch (checked first). A command's work dir (under the temp folder) is
removed once its logged peak is read.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
VIDEO = 'configs/video_dit/video_dit_xl2_8xb5_1m_ucf101_{}gb.py'
DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
# The demo at DiT-XL/2's widths: the ZeRO states dominate its memory.
XL_DEMO = ['model.denoiser.hidden_size=1152', 'model.denoiser.depth=28',
           'model.denoiser.num_heads=16', 'train_dataloader.batch_size=32']
XL = ['tools/benchmark.py', '--model', 'DiT-XL/2', '--input-size', '32', '--device',
      'cuda', '--precision', 'bf16', '--ema', '1e-4']

GPU_TESTS = [
    'tests/test_diffusion/test_gaussian.py::test_no_host_sync_in_a_step_on_a_gpu',
    'tests/test_engine/test_deepspeed_train.py::'
    'test_zero2_trains_on_cpu_resumes_exactly_and_converts',
    'tests/test_engine/test_deepspeed_train.py::test_zero2_bf16_trains_with_a_float32_ema',
    'tests/test_engine/test_deepspeed_train.py::test_zero3_one_process_resumes_exactly',
]

# name -> (command, time limit in s), in the order they run (the ones the GPU issue asks
# for first); {json} and {work} are filled in per command.
PLAN = {
    **{f'dit_xl2_b{b}': ([*XL, '--batch-size', str(b), '--steps', '10', '--warmup', '5',
                          '--json', '{json}'], 300) for b in (32, 128, 256)},
    # diffusers' DiT at the same size and batch, each in its own process, one after the
    # other (neither with an EMA, as in the CPU comparison)
    'dit_xl2_b128_diffusers': ([*XL[:-2], '--batch-size', '128', '--steps', '8',
                                '--warmup', '4', '--baseline', 'diffusers', '--json',
                                '{json}'], 300),
    # A 24 GB card holds 23.99 GiB, of which the CUDA context takes about 0.5.
    'video_xl2_24gb': (['tools/benchmark.py', VIDEO.format(24), '--device', 'cuda',
                        '--precision', 'bf16', '--batch-size', '5', '--steps', '5',
                        '--warmup', '2', '--memory-budget', '23.5', '--json', '{json}'],
                       300),
    'estimate_video_presets': ([
        'tools/estimate_memory.py', VIDEO.format(24), '--measure', 'cuda', '--batch-size',
        '1', '5', '--grad-checkpointing', '1', '2', '0', 'selective', '--json', '{json}'],
        300),
    # the 48 GB preset's step (every 2nd block recomputed) against selective
    # checkpointing (its setting Dec 3-4 2026, slower on an H200: 310.8 against 240.8 ms)
    **{f'video_xl2_48gb{suffix}': (['tools/benchmark.py', VIDEO.format(48), '--device',
                                    'cuda', '--precision', 'bf16', '--batch-size', '5',
                                    '--steps', '5', '--warmup', '2', *extra, '--json',
                                    '{json}'], 300)
       for suffix, extra in (('', []), ('_selective', ['--grad-checkpointing', 'selective']))},
    'zero2_xl_demo_estimate': (['tools/estimate_memory.py', DEMO, '--deepspeed',
                                'deepspeed_zero2', '--gpus', '1', '--precision', 'bf16',
                                '--json', '{json}', '--cfg-options', *XL_DEMO], 120),
    'zero2_xl_demo_run': (['tools/train.py', DEMO, '--deepspeed', 'deepspeed_zero2',
                           '--amp', '--work-dir', '{work}', '--cfg-options', *XL_DEMO,
                           'train_cfg.max_iters=10', 'default_hooks.logger.interval=1',
                           'default_hooks.checkpoint.interval=1000',
                           'default_hooks.checkpoint.save_last=False'], 600),
    # what the EMA update (mmengine's, one lerp per tensor) costs at the largest batch
    'dit_xl2_b256_no_ema': ([*XL[:-2], '--batch-size', '256', '--steps', '10',
                             '--warmup', '5', '--json', '{json}'], 300),
    # ... and what the per-step host syncs of LossGuardHook (the loss before the
    # backward, the gradient norm before the step) and the EMA cost where steps are
    # shortest, against dit_xl2_b32
    'dit_xl2_b32_no_guard': ([*XL, '--batch-size', '32', '--steps', '10', '--warmup', '5',
                              '--cfg-options', 'default_hooks.loss_guard=None',
                              '--json', '{json}'], 300),
    'dit_xl2_b32_no_ema': ([*XL[:-2], '--batch-size', '32', '--steps', '10', '--warmup',
                            '5', '--json', '{json}'], 300),
    'dit_xl2_b256_compile': ([*XL, '--batch-size', '256', '--steps', '10', '--warmup',
                              '5', '--compile', '--json', '{json}'], 600),
    # the one-card recipe (docs/distributed.md): 8 micro-batches of 5 clips, the first's
    # gradients kept through the second's forward; estimate against the allocator
    'estimate_24gb_accumulated': ([
        'tools/estimate_memory.py', VIDEO.format(24), '--measure', 'cuda', '--batch-size',
        '5', '--json', '{json}', '--cfg-options', 'optim_wrapper.accumulative_counts=8'],
        300),
    # the 480p, 5 s config (63,600 tokens per clip): estimate against the allocator at
    # 1 and 2 clips on one GPU (27.94 / 41.20 GiB estimated)
    'estimate_480p': ([
        'tools/estimate_memory.py', 'configs/video_dit/video_dit_xl2_8xb2_t5_480p_5s.py',
        '--measure', 'cuda', '--precision', 'bf16', '--batch-size', '1', '2', '--json',
        '{json}'], 300),
    # Stable Cascade lite video, spatial part frozen (11.50 / 15.73 GiB estimated)
    'estimate_stable_cascade_lite': ([
        'tools/estimate_memory.py',
        'configs/stable_cascade/stable_cascade_video_lite_1xb1_100k_clips1024.py',
        '--measure', 'cuda', '--precision', 'bf16', '--batch-size', '1', '2', '--json',
        '{json}'], 300),
    # FSDP over 8 processes, counted as one of them: the real FSDP step on this GPU
    # with the collectives faked (3.08 / 6.51 GiB estimated at 1 / 5 clips)
    'estimate_fsdp_text_stdit': ([
        'tools/estimate_memory.py', 'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py',
        '--fsdp', '--gpus', '8', '--measure', 'cuda', '--precision', 'bf16',
        '--grad-checkpointing', '1', '--batch-size', '1', '5', '--json', '{json}'], 300),
    # the same in bf16 compute (--fsdp fsdp_bf16; 2.73 / 4.78 GiB estimated)
    'estimate_fsdp_bf16_text_stdit': ([
        'tools/estimate_memory.py', 'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py',
        '--fsdp', 'fsdp_bf16', '--gpus', '8', '--measure', 'cuda',
        '--grad-checkpointing', '1', '--batch-size', '1', '5', '--json', '{json}'], 300),
    # ZeRO-3 over 8 processes, counted as one of them: DeepSpeed's engine on this GPU
    # with the collectives faked (5.69 / 7.93 GiB estimated at 1 / 5 clips)
    'estimate_zero3_text_stdit': ([
        'tools/estimate_memory.py', 'configs/video_dit/video_dit_xl2_8xb5_1m_t5_clips256.py',
        '--deepspeed', 'deepspeed_zero3', '--gpus', '8', '--measure', 'cuda',
        '--precision', 'bf16', '--grad-checkpointing', '1', '--batch-size', '1', '5',
        '--json', '{json}'], 300),
    # sampling (tools/benchmark_sampling.py): DiT-XL/2 256 px, 16 images, DDIM 50 steps
    # with guidance 4, in fp32, tf32 (infer's default on a GPU) and bf16; and one 480p,
    # 5 s clip (63,600 tokens, guided: 2 x 63,600 a step) at 10 steps in tf32 and bf16
    'sample_dit_xl2_b16': (['tools/benchmark_sampling.py', '--model', 'DiT-XL/2',
                            '--input-size', '32', '--device', 'cuda', '--batch-size', '16',
                            '--sampler', 'ddim', '--steps', '50', '--cfg-scale', '4',
                            '--precision', 'fp32', 'tf32', 'bf16', '--repeats', '2',
                            '--json', '{json}'], 300),
    'sample_video_480p': (['tools/benchmark_sampling.py',
                           'configs/video_dit/video_dit_xl2_8xb2_t5_480p_5s.py', '--device',
                           'cuda', '--batch-size', '1', '--sampler', 'ddim', '--steps', '10',
                           '--cfg-scale', '4', '--precision', 'tf32', 'bf16', '--repeats',
                           '1', '--json', '{json}'], 600),
    # where the step's time goes (torch.profiler: operators by device and by host time),
    # where MFU was lowest (batch 32, 23% on an H200) and highest (batch 256, 33%)
    **{f'dit_xl2_b{b}_profile': ([*XL, '--batch-size', str(b), '--steps', '3', '--warmup',
                                  '3', '--profile', '{profile}'], 300) for b in (32, 256)},
    # tests that take another path on a GPU, each on this one GPU: no host sync in the
    # diffusion's steps; ZeRO-2 (fp32 and bf16) and ZeRO-3 runs that train, resume
    # exactly and convert (the two-process ones need two devices)
    'gpu_tests': (['-m', 'pytest', '-q', '-p', 'no:cacheprovider', *GPU_TESTS], 400),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Measure the GPU figures of '
                                     'docs/benchmarks.md')
    parser.add_argument('out_dir')
    parser.add_argument('--only', nargs='+', choices=list(PLAN), metavar='NAME',
                        help=f'run these only: {", ".join(PLAN)}')
    parser.add_argument('--dry-run', action='store_true', help='print the commands')
    parser.add_argument('--allow-cpu', action='store_true',
                        help='run without a CUDA device (to try the plan itself: the '
                        'figures are not the GPU ones)')
    parser.add_argument('--time-budget', type=float, metavar='S',
                        help='stop starting commands when less than 30 s of this many '
                        'seconds is left, and cut each one to what is left')
    return parser.parse_args(argv)


# What every command imports; checked first, so that a machine without them (mmengine,
# diffusers, DeepSpeed) fails in seconds instead of once per command.
IMPORTS = 'import torch, mmengine, diffusers, deepspeed, mmsora.models, mmsora.diffusion'


def check_imports() -> None:
    proc = subprocess.run([sys.executable, '-c', IMPORTS], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f'cannot import what the benchmarks need:\n{proc.stderr[-2000:]}')


def commands(out_dir: str, only=None) -> dict:
    """name -> (argv, time limit): the plan with its paths filled in."""
    out = {}
    for name, (argv, limit) in PLAN.items():
        if only and name not in only:
            continue
        fill = dict(json=osp.join(out_dir, f'.{name}.json'),
                    work=osp.join(tempfile.gettempdir(), f'mmsora_gpu_{name}'),
                    profile=osp.join(out_dir, name))
        out[name] = ([a.format(**fill) for a in argv], limit)
    return out


def _peak_logged(work: str):
    """The largest ``memory`` (MiB, mmengine's max_memory_allocated) a run logged."""
    values = []
    for path in glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json')):
        with open(path) as f:
            values += [json.loads(line).get('memory') for line in f if line.strip()]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def run(name: str, argv: list, limit: int, out_dir: str, log) -> dict:
    cmd = [sys.executable, *argv]
    log.write(f'\n=== {name} ({time.strftime("%H:%M:%S")}): {shlex.join(cmd)}\n')
    log.flush()
    if '--work-dir' in argv:  # a fresh one: its logged peak is this run's
        shutil.rmtree(argv[argv.index('--work-dir') + 1], ignore_errors=True)
    start = time.perf_counter()
    # Its own process group: on a timeout the tool's worker processes (which hold the
    # GPU) go too, not only the tool.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'),
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = 'timeout'
    record = dict(command=shlex.join(cmd), rc=rc,
                  seconds=round(time.perf_counter() - start, 1))
    written = osp.join(out_dir, f'.{name}.json')
    if osp.exists(written):
        with open(written) as f:
            record['result'] = json.load(f)
        os.remove(written)
    if '--work-dir' in argv:  # read, then removed: a ZeRO run's checkpoints at
        work = argv[argv.index('--work-dir') + 1]  # DiT-XL/2's widths are ~10 GB
        record['logged_peak_mib'] = _peak_logged(work)
        shutil.rmtree(work, ignore_errors=True)
    log.write(f'=== {name}: rc={rc} in {record["seconds"]} s\n')
    log.flush()
    return record


# peak_mem_mb's kind (tools/benchmark.py, tools/benchmark_sampling.py) in a summary row
_PEAK_KINDS = {'cuda_allocated': 'allocated ', 'rss': 'RSS '}


def summary_rows(records: dict) -> list:
    """One line per benchmark: img/s, MFU and peak memory."""
    rows = []
    for name, record in records.items():
        results = (record.get('result') or {}).get('results') or []
        for r in results:
            tag = f" {r['precision']}" if 'precision' in r and 'impl' not in r else ''
            # which peak: peak_mem_kind (results recorded before it say nothing)
            kind = _PEAK_KINDS.get(r.get('peak_mem_kind'), '')
            rows.append(f"{name}{tag}: {r['samples_per_s']:.1f} samples/s, "
                        f"{r.get('tflops_per_s', 0):.1f} TFLOP/s, MFU "
                        f"{r.get('mfu', float('nan')):.3f}, peak {kind}"
                        f"{r['peak_mem_mb'] / 1024:.2f} GiB")
            if 'profile' in r:
                rows.append(f"{name}: {r['impl']}'s operators in {r['profile']}")
        if 'logged_peak_mib' in record:
            rows.append(f"{name}: logged peak {record['logged_peak_mib']} MiB")
        if record['rc'] != 0:
            rows.append(f"{name}: rc={record['rc']} (see log.txt)")
    return rows


def main(argv=None):
    args = parse_args(argv)
    plan = commands(args.out_dir, args.only)
    if args.dry_run:
        for name, (argv_, limit) in plan.items():
            print(f'{name} (limit {limit} s): python {shlex.join(argv_)}')
        return
    check_imports()
    import torch
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit('error: no CUDA device: these are the GPU figures (each command '
                         'would run on the CPU, or fail, for hours); --allow-cpu runs '
                         'them anyway, --dry-run prints them')
    os.makedirs(args.out_dir, exist_ok=True)
    summary = osp.join(args.out_dir, 'summary.json')
    records = {}
    if osp.exists(summary):  # an earlier (--only) run's records stay
        with open(summary) as f:
            records = json.load(f)
    start = time.perf_counter()
    ran = []
    with open(osp.join(args.out_dir, 'log.txt'), 'a') as log:
        for name, (argv_, limit) in plan.items():
            if args.time_budget is not None:
                left = args.time_budget - (time.perf_counter() - start)
                if left < 30:
                    log.write(f'\n=== {name}: skipped, {left:.0f} s of the budget left\n')
                    continue
                limit = min(limit, int(left))
            records[name] = run(name, argv_, limit, args.out_dir, log)
            ran.append(name)
            with open(summary, 'w') as f:
                json.dump(records, f, indent=2)  # after each: a cut-off run keeps it
    print('\n'.join(summary_rows({name: records[name] for name in ran})))
    failed = [name for name in ran if records[name]['rc'] != 0]
    if failed:
        print(f'{len(failed)} of {len(ran)} commands failed or timed out: '
              f'{", ".join(failed)} (see {osp.join(args.out_dir, "log.txt")})')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
