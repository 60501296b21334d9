"""Time real training steps of a denoiser, optionally next to diffusers' DiT.

    python tools/benchmark.py CONFIG [--batch-size 32] [--device cuda] [--precision bf16]
    python tools/benchmark.py --model DiT-S/2 --input-size 32 --baseline diffusers

A step is DiT's training step: t ~ U[0, 1000), x_t = q(x_t | x_0) with DiT's linear
schedule, forward(x_t, t, y), MSE between the first ``in_channels`` output channels and
the noise (epsilon loss), backward, AdamW (lr 1e-4, wd 0). Each model runs in its own
subprocess, so peak RSS (CPU) / peak allocated memory (CUDA) is that model's alone.

FLOPs are counted analytically (:func:`mmsora.models.dit_flops`; the DiT paper's
"Gflops" are MACs, so FLOPs = 2 x MACs, and a training step is ~3 forward passes).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

_RESULT_TAG = 'BENCHMARK_RESULT '
_DTYPES = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Benchmark denoiser training steps')
    parser.add_argument('config', nargs='?', help='config file; its model.denoiser is '
                        'benchmarked (without one, --model/--input-size pick a preset)')
    parser.add_argument('--model', default='DiT-S/2', help='DiT preset when no CONFIG '
                        'is given (DiT-S/2 ... DiT-XL/8)')
    parser.add_argument('--input-size', type=int, default=32,
                        help='latent size for --model (32 = 256 px images)')
    parser.add_argument('--num-classes', type=int, default=1000, help='for --model')
    parser.add_argument('--steps', type=int, default=10, help='timed steps')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--precision', choices=list(_DTYPES), default='fp32',
                        help='bf16/fp16 run under autocast with fp32 weights (AMP)')
    parser.add_argument('--baseline', choices=['diffusers'],
                        help='also time diffusers\' DiTTransformer2DModel at the same size')
    parser.add_argument('--json', metavar='FILE', help='write the results here as JSON')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--repeats', type=int, default=1,
                        help='run each model this many times, alternating them, and keep '
                        'each one\'s fastest run (steadier on a shared machine)')
    parser.add_argument('--grad-checkpointing', type=int, metavar='K',
                        help='set the denoiser\'s grad_checkpointing: recompute every '
                        'K-th block in the backward pass (1: every block, 0: none)')
    parser.add_argument('--attn-backend', default='auto',
                        choices=['auto', 'sdpa', 'flash_attn', 'xformers'],
                        help='attention kernel of our denoiser (auto: flash-attn or '
                        'xformers where installed and suitable, else PyTorch SDPA)')
    parser.add_argument('--interleave', action='store_true',
                        help='with --baseline: both models in one process taking turns '
                        'step by step; reports best and median step and how many step '
                        'pairs each won (no per-model memory)')
    parser.add_argument('--ema', type=float, metavar='MOMENTUM',
                        help="also update a float32 EMA of the weights after each step "
                        "(tools/train.py's EMAHook, e.g. 1e-4 as DiT; fast-DiT's step "
                        'does this too); default: none')
    parser.add_argument('--seed', type=int, default=0)
    # Internal: run one implementation in this process and print its result.
    parser.add_argument('--worker', choices=['ours', 'diffusers'], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- #
#                                  Models                                      #
# --------------------------------------------------------------------------- #
def denoiser_cfg(args) -> dict:
    """The denoiser's config dict: ``cfg.model.denoiser`` or a named DiT preset."""
    from mmsora.models import dit_preset
    if args.config:
        from mmengine.config import Config
        cfg = Config.fromfile(args.config)
        return dict(cfg.model.denoiser)
    return dict(type='DiT', **dit_preset(args.model, input_size=args.input_size,
                                          num_classes=args.num_classes))


def dit_arch(cfg: dict) -> dict:
    """The DiT constructor arguments with their defaults filled in."""
    import inspect

    from mmsora.models import DiT
    params = inspect.signature(DiT).parameters
    arch = {k: p.default for k, p in params.items()}
    arch.update({k: v for k, v in cfg.items() if k != 'type'})
    return arch


def build_ours(cfg: dict):
    import mmsora.models  # noqa: F401  (fills the registry)
    from mmsora.registry import MODELS
    model = MODELS.build(cfg)
    return model, lambda x, t, y: model(x, t, y)


def build_diffusers(cfg: dict):
    from diffusers import DiTTransformer2DModel
    if cfg.get('type') != 'DiT':
        raise SystemExit(f'--baseline diffusers needs a DiT denoiser, got {cfg.get("type")}')
    a = dit_arch(cfg)
    model = DiTTransformer2DModel(
        num_attention_heads=a['num_heads'],
        attention_head_dim=a['hidden_size'] // a['num_heads'],
        in_channels=a['in_channels'],
        out_channels=a['in_channels'] * (2 if a['learn_sigma'] else 1),
        num_layers=a['depth'], sample_size=a['input_size'], patch_size=a['patch_size'],
        num_embeds_ada_norm=a['num_classes'])
    return model, lambda x, t, y: model(x, timestep=t, class_labels=y).sample


# --------------------------------------------------------------------------- #
#                                 One worker                                   #
# --------------------------------------------------------------------------- #
def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def _usage():
    """(minor page faults so far, CPU seconds of all this process's threads so far)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()


def make_step(args, impl: str):
    """Build ``impl`` ('ours' / 'diffusers') and return (model, step, cfg, arch):
    ``step()`` runs one training step (forward, loss, backward, AdamW)."""
    device = torch.device(args.device)
    cfg = denoiser_cfg(args)
    arch = dit_arch(cfg) if cfg.get('type') == 'DiT' else dict(cfg)
    if args.grad_checkpointing is not None and impl == 'ours':
        cfg['grad_checkpointing'] = args.grad_checkpointing
    model, forward = (build_ours if impl == 'ours' else build_diffusers)(cfg)
    if impl == 'ours':
        from mmsora.models.layers import set_attention_backend
        set_attention_backend(model, args.attn_backend)
    model.to(device).train()
    from mmsora.engine.strategies import prefer_fused_optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    # tools/train.py's choice: one fused kernel for the update on CUDA
    fused = prefer_fused_optimizer(dict(type='AdamW'), device.type).get('fused', False)
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0, fused=fused or None)
    # EMAHook's update (mmengine's rule, a float32 average): one lerp over the weights
    ema = [p.detach().float().clone() for p in params] if args.ema else None
    dtype = _DTYPES[args.precision]
    scaler = torch.amp.GradScaler('cuda', enabled=dtype is torch.float16
                                  and device.type == 'cuda')

    # DiT's linear beta schedule, for a realistic x_t.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0).float().to(device)
    n, c, s = args.batch_size, arch['in_channels'], arch['input_size']
    x0 = torch.randn(n, c, s, s, device=device)
    y = torch.randint(0, arch.get('num_classes', 1000), (n,), device=device)

    def step():
        t = torch.randint(0, 1000, (n,), device=device)
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(n, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = forward(x_t, t, y)
            loss = F.mse_loss(out[:, :c].float(), noise)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach().float() for p in params], args.ema)
        return loss.detach()

    step.ema = ema
    return model, step, cfg, arch


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def run_worker(args) -> dict:
    """Build one implementation and time its training steps."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    rss_before_model = _rss_mb()
    model, step, cfg, arch = make_step(args, args.worker)
    dtype = _DTYPES[args.precision]
    n = args.batch_size

    def sync():
        _sync(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    faults, cpu = _usage()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - start
    end_faults, end_cpu = _usage()
    faults, cpu_s = end_faults - faults, end_cpu - cpu

    step_s = elapsed / args.steps
    result = dict(
        impl=args.worker,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        step_ms=step_s * 1e3,
        samples_per_s=n / step_s,
        loss=loss.item(),
        cpu_ms=cpu_s / args.steps * 1e3,  # all threads of this process
        page_faults=faults / args.steps,  # minor: first touches of fresh memory
    )
    if args.worker == 'ours' and 'hidden_size' in arch and 'num_heads' in arch:
        from mmsora.models.layers.attention_backends import resolve_backend
        result['attn_kernel'] = resolve_backend(
            args.attn_backend, device.type, dtype or torch.float32,
            arch['hidden_size'] // arch['num_heads'], masked=False, dropout_p=0.0)
    if cfg.get('type') == 'DiT':
        from mmsora.models import dit_flops
        tokens = (arch['input_size'] // arch['patch_size']) ** 2
        flops_per_step = 3 * 2 * dit_flops(**arch) * n  # fwd + 2x fwd for backward
        result.update(tokens_per_s=tokens * n / step_s,
                      fwd_gflops_per_sample=2 * dit_flops(**arch) / 1e9,
                      tflops_per_s=flops_per_step / step_s / 1e12)
    if device.type == 'cuda':
        result['peak_mem_mb'] = torch.cuda.max_memory_allocated() / 2**20
    else:
        # ru_maxrss is in KiB on Linux; it includes the interpreter and torch itself,
        # so also report the RSS measured before the model was built.
        result['peak_mem_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result['rss_before_model_mb'] = rss_before_model
    return result


# --------------------------------------------------------------------------- #
#                                   Driver                                     #
# --------------------------------------------------------------------------- #
def interleave(args) -> dict:
    """Both models in this process, taking turns one step at a time (ABBA order), so
    that a slow spell of a shared machine hits both alike. Returns, for each model and
    each step after ``--warmup`` steps each: wall time (``step_ms``), CPU time of all
    this process's threads (``cpu_ms``) and minor page faults (``page_faults``: the
    first touch of freshly mapped memory, e.g. glibc's mmap of every buffer above its
    threshold on CPU)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = ['ours', args.baseline]
    steps = {}
    for impl in impls:
        torch.manual_seed(args.seed)  # the same data for both
        steps[impl] = make_step(args, impl)[1]
    record = {key: {impl: [] for impl in impls}
              for key in ('step_ms', 'cpu_ms', 'page_faults')}
    for i in range(args.warmup + args.steps):
        for impl in (impls if i % 2 == 0 else impls[::-1]):
            (faults, cpu), start = _usage(), time.perf_counter()
            steps[impl]()
            _sync(args.device)
            if i >= args.warmup:
                record['step_ms'][impl].append((time.perf_counter() - start) * 1e3)
                end_faults, end_cpu = _usage()
                record['cpu_ms'][impl].append((end_cpu - cpu) * 1e3)
                record['page_faults'][impl].append(end_faults - faults)
    return record


def interleave_report(args, record: dict) -> str:
    times = record['step_ms']
    ours, base = times['ours'], times[args.baseline]
    faster = sum(a < b for a, b in zip(ours, base))
    lines = [f'{impl}: step_ms best {min(t):.1f}, median {statistics.median(t):.1f}; '
             f'each step {[round(v) for v in t]}; median CPU ms '
             f'{statistics.median(record["cpu_ms"][impl]):.0f}, minor page faults '
             f'{statistics.median(record["page_faults"][impl]):.0f} per step'
             for impl, t in times.items()]
    lines.append(f'samples/s ratio ours/{args.baseline}: best '
                 f'{min(base) / min(ours):.3f}, median '
                 f'{statistics.median(base) / statistics.median(ours):.3f}; ours faster '
                 f'in {faster} of {len(ours)} step pairs')
    return '\n'.join(lines)


def spawn(impl: str, argv) -> dict:
    """Run one implementation in a fresh interpreter (per-model peak memory)."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, '--worker', impl]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f'benchmark worker for {impl} failed (exit {proc.returncode})')
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    raise SystemExit(f'benchmark worker for {impl} printed no result:\n{proc.stdout}')


def format_table(results: list) -> str:
    cols = [('impl', '{}'), ('params_m', '{:.2f}'), ('step_ms', '{:.1f}'),
            ('samples_per_s', '{:.2f}'), ('tokens_per_s', '{:.0f}'),
            ('tflops_per_s', '{:.4f}'), ('peak_mem_mb', '{:.0f}'), ('cpu_ms', '{:.0f}'),
            ('page_faults', '{:.0f}')]
    rows = [[name for name, _ in cols]]
    for r in results:
        rows.append([fmt.format(r[k]) if k in r else '-' for k, fmt in cols])
    if len(results) == 2:
        ours, base = results
        rows.append(['ratio ours/diffusers'] + [
            f'{ours[k] / base[k]:.3f}' if k in ours and k in base and base[k] else '-'
            for k, _ in cols[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return '\n'.join('  '.join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        print(_RESULT_TAG + json.dumps(run_worker(args)), flush=True)
        return
    if args.interleave:
        if not args.baseline:
            raise SystemExit('--interleave compares two models: add --baseline diffusers')
        record = interleave(args)
        print(f'model={args.config or args.model} batch_size={args.batch_size} '
              f'device={args.device} precision={args.precision} steps={args.steps} '
              f'warmup={args.warmup} ema={args.ema} interleaved threads='
              f'{args.threads or torch.get_num_threads()} torch={torch.__version__}')
        print(interleave_report(args, record))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(dict(setup=vars(args), **record), f, indent=2)
        return
    impls = ['ours'] + ([args.baseline] if args.baseline else [])
    # Alternate the models so that load from other processes hits both alike.
    runs = {impl: [] for impl in impls}
    for _ in range(args.repeats):
        for impl in impls:
            runs[impl].append(spawn(impl, argv))
    results = []
    for impl in impls:
        best = dict(min(runs[impl], key=lambda r: r['step_ms']))
        best['step_ms_all'] = [round(r['step_ms'], 1) for r in runs[impl]]
        best['peak_mem_mb'] = max(r['peak_mem_mb'] for r in runs[impl])
        results.append(best)
    setup = dict(config=args.config, model=None if args.config else args.model,
                 input_size=args.input_size, batch_size=args.batch_size,
                 grad_checkpointing=args.grad_checkpointing, attn_backend=args.attn_backend,
                 ema=args.ema, device=args.device, precision=args.precision, steps=args.steps,
                 warmup=args.warmup, repeats=args.repeats,
                 threads=args.threads or torch.get_num_threads(), torch=torch.__version__)
    print(' '.join(f'{k}={v}' for k, v in setup.items() if v is not None))
    print(format_table(results))
    for r in results:
        if 'attn_kernel' in r:
            print(f"{r['impl']}: attention kernel {r['attn_kernel']}")
    if args.repeats > 1:
        for r in results:
            print(f"{r['impl']}: step_ms of each run {r['step_ms_all']}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(setup=setup, results=results), f, indent=2)


if __name__ == '__main__':
    main()
