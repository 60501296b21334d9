"""Time a training checkpoint's save and load and measure the memory they take.

Saving: mmsora's ``save_checkpoint`` (``torch.save`` streamed into the file) against
mmengine's (the whole checkpoint serialised into memory first, then written).
Loading the weights into a fresh model, as tools/infer.py does: the file mapped
(``load_checkpoint_file``'s default: only the tensors used are read) against read
whole.

    python tools/benchmark_checkpoint.py [--model DiT-B/2] [--depth N] \
        [--writers ours mmengine] [--readers mapped read] [--out DIR] [--json FILE]

A bare ``--writers`` or ``--readers`` (an empty list) leaves that half out: ``--readers``
alone measures the saves only, ``--writers`` alone the loads (one save made for them).

The checkpoint is the one ``tools/train.py`` writes for a DiT preset at 256 px: the
weights (``state_dict``), their EMA (``ema_state_dict``) and AdamW's two moments, all
float32, about 16 bytes per parameter. Each save and each load runs in a fresh
process (the loads read the last save's file, which is in the page cache then), in
``--out`` (default: a temporary folder); the figures are that process's resident
memory just before, its peak during (Linux's VmHWM, reset just before), and the wall
time (a save's fsync included).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

from mmsora.utils.process_memory import peak_rss_mb, reset_peak_rss, rss_mb

WRITERS = ('ours', 'mmengine')
READERS = ('mapped', 'read')


def parse_args(argv=None):
    from mmsora.utils.cli import ArgumentParser, check_output_path
    parser = ArgumentParser(description='Benchmark checkpoint saves and loads')
    parser.add_argument('--model', default='DiT-B/2', help='DiT preset (default: DiT-B/2)')
    parser.add_argument('--depth', type=int, help="blocks (default: the preset's)")
    parser.add_argument('--writers', nargs='*', choices=WRITERS, default=list(WRITERS),
                        help='save with these (default: both; a bare --writers: no saves '
                        'measured, one made for the loads to read)')
    parser.add_argument('--readers', nargs='*', choices=READERS, default=list(READERS),
                        help='then load the weights with the file mapped (what the '
                        'tools do) or read (default: both; a bare --readers: no loads)')
    parser.add_argument('--out', help='folder to write into (default: a temporary one)')
    parser.add_argument('--json', metavar='FILE', help='write the results here (its folder '
                        'is made if missing)')
    parser.add_argument('--child', choices=WRITERS + READERS, help=argparse.SUPPRESS)
    parser.add_argument('--keep', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from mmsora.models import DIT_PRESETS
    if args.model not in DIT_PRESETS:
        parser.error(f'--model: unknown DiT preset {args.model!r}; choose from '
                     f'{", ".join(sorted(DIT_PRESETS))}')
    if not args.writers and not args.readers:
        parser.error('nothing to measure: give --writers or --readers')
    if args.depth is not None and args.depth < 1:
        parser.error(f'--depth must be >= 1, got {args.depth}')
    check_output_path(args.out, '--out', folder=True)
    check_output_path(args.json, '--json')
    return args


def build_checkpoint(model_name, depth=None):
    """The dict tools/train.py saves: weights, EMA, AdamW state (random moments)."""
    import torch
    torch.manual_seed(0)
    model = _model(model_name, depth)
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


def _model(model_name, depth):
    from mmsora.models import DiT, dit_preset
    return DiT(**dit_preset(model_name, input_size=32,
                            **({} if depth is None else dict(depth=depth))))


def save_child(args):
    """Build, save once with ``args.child``, print one JSON line."""
    import gc

    import mmengine.runner.checkpoint as mm_checkpoint

    import mmsora.engine  # noqa: F401  (the atomic LocalBackend.put, for both)
    from mmsora.engine.atomic_checkpoint import MMENGINE_SAVE_CHECKPOINT, save_checkpoint
    ckpt = build_checkpoint(args.model, args.depth)
    nbytes = sum(t.numel() * t.element_size() for part in ('state_dict', 'ema_state_dict')
                 for t in ckpt[part].values())
    nbytes += sum(t.numel() * t.element_size() for s in ckpt['optimizer']['state'].values()
                  for t in s.values())
    gc.collect()
    save = save_checkpoint if args.child == 'ours' else MMENGINE_SAVE_CHECKPOINT
    assert mm_checkpoint.save_checkpoint is save_checkpoint  # what the runner calls
    path = osp.join(args.out, 'checkpoint.pth')
    reset_peak()
    before = rss_mb()
    start = time.perf_counter()
    save(ckpt, path)
    seconds = time.perf_counter() - start
    print(json.dumps(dict(writer=args.child, tensor_mb=nbytes / 2**20,
                          file_mb=os.path.getsize(path) / 2**20, save_s=seconds,
                          rss_before_mb=before, peak_during_mb=peak_rss_mb())))
    if not args.keep:
        os.remove(path)


def reset_peak():
    """Start the peak RSS anew before what is measured; a peak that cannot be reset
    (no writable ``/proc/self/clear_refs``) would be the child's whole life's, the
    model's build included, so the child stops instead of printing it."""
    if not reset_peak_rss():
        raise SystemExit('benchmark_checkpoint.py: cannot reset the peak RSS '
                         '(/proc/self/clear_refs is not writable): the peak during a save '
                         'or load needs Linux /proc')


def load_child(args):
    """Load the saved checkpoint's weights into a fresh model, as tools/infer.py does,
    with the file mapped or read; print one JSON line."""
    import gc

    from mmsora.engine.compat import make_mmengine_checkpoints_loadable
    from mmsora.utils.checkpoint import load_checkpoint_file
    model = _model(args.model, args.depth).eval()
    make_mmengine_checkpoints_loadable()  # its imports (mmengine) before the count
    gc.collect()
    reset_peak()
    before = rss_mb()
    start = time.perf_counter()
    obj = load_checkpoint_file(osp.join(args.out, 'checkpoint.pth'),
                               mmap=args.child == 'mapped')
    model.load_state_dict(obj['state_dict'])
    del obj
    gc.collect()
    seconds = time.perf_counter() - start
    print(json.dumps(dict(reader=args.child, load_s=seconds, rss_before_mb=before,
                          peak_during_mb=peak_rss_mb(), rss_after_mb=rss_mb())))


def _run(args, out, child, keep=False):
    proc = subprocess.run(
        [sys.executable, osp.abspath(__file__), '--model', args.model, '--out', out,
         '--child', child, *(['--depth', str(args.depth)] if args.depth else []),
         *(['--keep'] if keep else [])], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f'the {child} run failed:\n{proc.stderr[-3000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.child in WRITERS:
        return save_child(args)
    if args.child in READERS:
        return load_child(args)
    with tempfile.TemporaryDirectory(prefix='mmsora_ckpt_') as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        # the loads read the last save's file: one save at least
        writers = args.writers or ['ours']
        saves = [_run(args, out, w, keep=bool(args.readers) and i == len(writers) - 1)
                 for i, w in enumerate(writers)]
        loads = [_run(args, out, r) for r in args.readers]
        if args.readers:
            os.remove(osp.join(out, 'checkpoint.pth'))
    for r in saves + loads:
        r['extra_mb'] = max(0.0, r['peak_during_mb'] - r['rss_before_mb'])
    print(f'model={args.model}' + (f' depth={args.depth}' if args.depth else '') +
          f' checkpoint {saves[0]["file_mb"]:.0f} MB (weights, EMA, AdamW moments)')
    if args.writers:
        print(f'{"save":>9} {"s":>7} {"RSS before MB":>14} {"peak MB":>8} '
              f'{"extra MB":>9} {"extra / file":>13}')
        for r in saves[:len(args.writers)]:
            print(f'{r["writer"]:>9} {r["save_s"]:7.2f} {r["rss_before_mb"]:14.0f} '
                  f'{r["peak_during_mb"]:8.0f} {r["extra_mb"]:9.0f} '
                  f'{r["extra_mb"] / r["file_mb"]:13.2f}')
    if args.readers:
        print(f'{"load":>9} {"s":>7} {"RSS before MB":>14} {"peak MB":>8} '
              f'{"extra MB":>9} {"RSS after MB":>13}')
        for r in loads:
            print(f'{r["reader"]:>9} {r["load_s"]:7.2f} {r["rss_before_mb"]:14.0f} '
                  f'{r["peak_during_mb"]:8.0f} {r["extra_mb"]:9.0f} '
                  f'{r["rss_after_mb"]:13.0f}')
    result = dict(model=args.model, depth=args.depth,
                  saves=saves[:len(args.writers)], loads=loads)
    if args.json:  # checked before the runs; its folder made now if missing
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    from mmsora.utils.cli import run_cli
    sys.exit(run_cli(main))
