"""Time a training checkpoint's save and measure the memory it takes: mmsora's
``save_checkpoint`` (``torch.save`` streamed into the file) against mmengine's (the
whole checkpoint serialised into memory first, then written).

    python tools/benchmark_checkpoint.py [--model DiT-B/2] [--depth N] \
        [--writers ours mmengine] [--out DIR] [--json FILE]

The checkpoint is the one ``tools/train.py`` writes for a DiT preset at 256 px: the
weights (``state_dict``), their EMA (``ema_state_dict``) and AdamW's two moments, all
float32, about 16 bytes per parameter. Each writer runs in a fresh process that builds
the checkpoint, then saves it once into ``--out`` (default: a temporary folder); the
figures are that process's resident memory just before the save and its peak during
it (Linux's VmHWM, reset just before the save), and the save's wall time (fsync
included).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

WRITERS = ('ours', 'mmengine')


def parse_args(argv=None):
    from mmsora.utils.cli import check_output_path
    parser = argparse.ArgumentParser(description='Benchmark a checkpoint save')
    parser.add_argument('--model', default='DiT-B/2', help='DiT preset (default: DiT-B/2)')
    parser.add_argument('--depth', type=int, help="blocks (default: the preset's)")
    parser.add_argument('--writers', nargs='+', choices=WRITERS, default=list(WRITERS))
    parser.add_argument('--out', help='folder to write into (default: a temporary one)')
    parser.add_argument('--json', metavar='FILE', help='write the results here')
    parser.add_argument('--child', choices=WRITERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from mmsora.models import DIT_PRESETS
    if args.model not in DIT_PRESETS:
        parser.error(f'--model: unknown DiT preset {args.model!r}; choose from '
                     f'{", ".join(sorted(DIT_PRESETS))}')
    if args.depth is not None and args.depth < 1:
        parser.error(f'--depth must be >= 1, got {args.depth}')
    check_output_path(args.out, '--out', folder=True)
    check_output_path(args.json, '--json')
    return args


def rss_mb() -> float:
    """This process's resident memory now."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20


def reset_peak_rss() -> None:
    """Start this process's peak resident memory (VmHWM) anew from its current RSS."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def peak_rss_mb() -> float:
    """This process's peak resident memory since :func:`reset_peak_rss` (VmHWM)."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    raise RuntimeError('no VmHWM in /proc/self/status')


def build_checkpoint(model_name, depth=None):
    """The dict tools/train.py saves: weights, EMA, AdamW state (random moments)."""
    import torch

    from mmsora.models import DiT, dit_preset
    torch.manual_seed(0)
    model = DiT(**dit_preset(model_name, input_size=32,
                             **({} if depth is None else dict(depth=depth))))
    params = [p for p in model.parameters() if p.requires_grad]
    state = {i: dict(step=torch.tensor(1.0), exp_avg=torch.randn_like(p),
                     exp_avg_sq=torch.randn_like(p).abs_())
             for i, p in enumerate(params)}
    groups = [dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                   params=list(range(len(params))))]
    weights = model.state_dict()
    return dict(meta=dict(iter=1), state_dict=weights,
                ema_state_dict={k: v.clone() for k, v in weights.items()},
                optimizer=dict(state=state, param_groups=groups))


def run_child(args):
    """Build, save once with ``args.child``, print one JSON line."""
    import gc

    import mmengine.runner.checkpoint as mm_checkpoint

    import mmsora.engine  # noqa: F401  (the atomic LocalBackend.put, for both)
    from mmsora.engine.atomic_checkpoint import _MMENGINE_SAVE_CHECKPOINT, save_checkpoint
    ckpt = build_checkpoint(args.model, args.depth)
    nbytes = sum(t.numel() * t.element_size() for part in ('state_dict', 'ema_state_dict')
                 for t in ckpt[part].values())
    nbytes += sum(t.numel() * t.element_size() for s in ckpt['optimizer']['state'].values()
                  for t in s.values())
    gc.collect()
    save = save_checkpoint if args.child == 'ours' else _MMENGINE_SAVE_CHECKPOINT
    assert mm_checkpoint.save_checkpoint is save_checkpoint  # what the runner calls
    path = osp.join(args.out, f'{args.child}.pth')
    reset_peak_rss()
    before, peak_before = rss_mb(), peak_rss_mb()
    start = time.perf_counter()
    save(ckpt, path)
    seconds = time.perf_counter() - start
    print(json.dumps(dict(writer=args.child, tensor_mb=nbytes / 2**20,
                          file_mb=os.path.getsize(path) / 2**20, save_s=seconds,
                          rss_before_mb=before, peak_before_mb=peak_before,
                          peak_during_mb=peak_rss_mb())))
    os.remove(path)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    with tempfile.TemporaryDirectory(prefix='mmsora_ckpt_') as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        results = []
        for writer in args.writers:
            proc = subprocess.run(
                [sys.executable, osp.abspath(__file__), '--model', args.model, '--out', out,
                 '--child', writer, *(['--depth', str(args.depth)] if args.depth else [])],
                capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f'the {writer} run failed:\n{proc.stderr[-3000:]}')
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f'model={args.model}' + (f' depth={args.depth}' if args.depth else '') +
          ' checkpoint tensors '
          f'{results[0]["tensor_mb"]:.0f} MB (weights, EMA, AdamW moments)')
    print(f'{"writer":>9} {"file MB":>8} {"save s":>7} {"RSS before MB":>14} '
          f'{"peak in save MB":>16} {"extra MB":>9} {"extra / file":>13}')
    for r in results:
        r['extra_mb'] = max(0.0, r['peak_during_mb'] - r['rss_before_mb'])
        print(f'{r["writer"]:>9} {r["file_mb"]:8.0f} {r["save_s"]:7.2f} '
              f'{r["rss_before_mb"]:14.0f} {r["peak_during_mb"]:16.0f} '
              f'{r["extra_mb"]:9.0f} {r["extra_mb"] / r["file_mb"]:13.2f}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(model=args.model, depth=args.depth, results=results), f,
                      indent=1)
    return results


if __name__ == '__main__':
    from mmsora.utils.cli import run_cli
    sys.exit(run_cli(main))
