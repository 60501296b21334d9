"""Soak test: a long multi-process CPU training run, watched for memory growth.

    python tools/soak.py [--iters 500] [--nproc 2] [--workers 2] [--out soak.json]

Writes a small fast-DiT ``.npy`` latent folder (so data-loader workers read files every
step, as on real data), then trains a tiny DiT on it with ``tools/dist_train.sh``
(torchrun, gloo) while sampling, every ``--interval`` seconds, the memory of every
process of the run: each rank and each of its data-loader workers. Memory is PSS
(proportional set size: pages shared between forked processes are divided among
them, so the sum is not inflated), read from ``/proc/PID/smaps_rollup``.

The figure that matters is the slope of memory against iterations after warm-up
(``--warmup`` of the iterations: allocator pools, first checkpoint): a leak of a few
KiB per step shows as a steady positive slope. Reported, in MiB and MiB per 100
iterations (over all counted points and over their second half): the summed PSS of
all processes, and per rank its RSS and its workers' summed RSS and PSS. The result
is printed, and written as JSON with the raw samples (``--out``); docs/reliability.md
records runs. Linux only (reads /proc).
"""
import json
import os
import os.path as osp
import re
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
_ITER = re.compile(r'Iter\(train\) \[\s*(\d+)/')


def parse_args(argv=None):
    from mmsora.utils.cli import ArgumentParser
    parser = ArgumentParser(description='Multi-process CPU training soak test')
    parser.add_argument('--iters', type=int, default=500, help='training iterations')
    parser.add_argument('--nproc', type=int, default=2, help='training processes')
    parser.add_argument('--workers', type=int, default=2,
                        help='data-loader workers per process')
    parser.add_argument('--batch-size', type=int, default=8, help='per process')
    parser.add_argument('--items', type=int, default=512, help='latent files to write')
    parser.add_argument('--interval', type=float, default=0.5, help='seconds between samples')
    parser.add_argument('--warmup', type=float, default=0.2,
                        help='fraction of the iterations left out of the slope')
    parser.add_argument('--work-dir', default='work_dirs/soak')
    parser.add_argument('--port', type=int, help='rendezvous port of the training processes '
                        '(default: a free one)')
    parser.add_argument('--out', metavar='FILE', help='write the result as JSON here (its '
                        'folder is made if missing)')
    args = parser.parse_args(argv)
    for name in ('iters', 'nproc', 'batch_size', 'items'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.workers < 0:
        parser.error(f'--workers must be >= 0 (0: load in the main process), got '
                     f'{args.workers}')
    if args.port is None:  # two soaks at once on one machine: each its own
        from mmsora.utils.dist import free_port
        args.port = free_port()
    if not 0 <= args.warmup < 1:
        parser.error('--warmup must be in [0, 1)')
    if not args.interval > 0:
        parser.error(f'--interval must be > 0 seconds, got {args.interval}')
    from mmsora.utils.cli import UserError, check_output_path
    try:  # before the run, not after it
        check_output_path(args.out, '--out')
    except UserError as e:
        parser.error(str(e))
    return args


def write_latents(folder, n, seed=0):
    """fast-DiT layout: features/N.npy (1, 4, 8, 8) float32, labels/N.npy (1,)."""
    rng = np.random.default_rng(seed)
    for sub in ('features', 'labels'):
        os.makedirs(osp.join(folder, sub), exist_ok=True)
    for i in range(n):
        np.save(osp.join(folder, 'features', f'{i}.npy'),
                rng.standard_normal((1, 4, 8, 8)).astype(np.float32))
        np.save(osp.join(folder, 'labels', f'{i}.npy'), np.array([i % 4]))


def children_map():
    """``{pid: [child pids]}`` of every process, from /proc/PID/stat."""
    children = {}
    for name in os.listdir('/proc'):
        if not name.isdigit():
            continue
        try:
            with open(f'/proc/{name}/stat') as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(')') + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def memory_kib(pid):
    """``(rss, pss)`` of a process in KiB, or None once it has exited."""
    values = {}
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                key = line.split(':')[0]
                if key in ('Rss', 'Pss'):
                    values[key] = int(line.split()[1])
    except OSError:
        return None
    return (values['Rss'], values['Pss']) if len(values) == 2 else None


def sample(launcher_pid):
    """Memory of each rank and of its workers.

    Returns:
        ``{rank_pid: (rank_rss, rank_pss, workers_pss, num_workers, workers_rss)}``,
        memory in KiB. Ranks are the children of torchrun's launcher; workers their
        children.
    """
    children = children_map()
    result = {}
    for rank in children.get(launcher_pid, []):
        own = memory_kib(rank)
        workers = [memory_kib(w) for w in children.get(rank, [])]
        workers = [w for w in workers if w is not None]
        if own is not None:
            result[rank] = (own[0], own[1], sum(w[1] for w in workers), len(workers),
                            sum(w[0] for w in workers))
    return result


def slope_per_100(iters, values):
    """Least-squares slope of ``values`` against ``iters``, per 100 iterations."""
    if len(set(iters)) < 2:
        return None  # too few points (JSON has no NaN)
    return round(float(np.polyfit(np.asarray(iters, float), np.asarray(values, float),
                                  1)[0] * 100), 3)


def summarise(its, series):
    """First and last value (MiB) and slopes (MiB per 100 iterations, over all the
    points and over their second half, to tell a leak from a curve that flattens)."""
    out = {}
    half = len(its) // 2
    for name, kib in series.items():
        mib = [v / 1024 for v in kib]
        out.update({f'{name}_mib_first': round(mib[0], 1), f'{name}_mib_last': round(mib[-1], 1),
                    f'{name}_slope': slope_per_100(its, mib),
                    f'{name}_slope_2nd_half': slope_per_100(its[half:], mib[half:])})
    return out


def main(argv=None):
    args = parse_args(argv)
    data = osp.join(args.work_dir, 'latents')
    try:
        write_latents(data, args.items)
    except OSError as e:  # --work-dir runs into a file, or cannot be written
        raise SystemExit(f'soak.py: error: --work-dir {args.work_dir}: {e.strerror}: '
                         f'{e.filename}')
    options = [
        f'train_cfg.max_iters={args.iters}', 'param_scheduler=[]',
        'model.denoiser.hidden_size=32', 'model.denoiser.depth=2',
        'model.denoiser.num_heads=2', 'model.denoiser.input_size=8',
        'model.denoiser.in_channels=4', 'model.latent_shape=[4,8,8]',
        f'train_dataloader.batch_size={args.batch_size}',
        f'train_dataloader.num_workers={args.workers}',
        f'train_dataloader.persistent_workers={args.workers > 0}',
        'default_hooks.logger.interval=10',
        f'default_hooks.checkpoint.interval={max(args.iters // 5, 1)}',
    ]
    run = osp.join(args.work_dir, 'run')
    if osp.isdir(run):  # an earlier soak's run: tools/train.py refuses a work dir
        # holding checkpoints without --resume, and a soak measures a run from its start
        import shutil
        shutil.rmtree(run)
        print(f'soak.py: removed the earlier soak run {run}', flush=True)
    config = osp.join(args.work_dir, 'soak_config.py')
    with open(config, 'w') as f:  # the demo's model and schedule on the latent files
        f.write(f'_base_ = [{CONFIG!r}]\n'
                "train_dataloader = dict(dataset=dict(_delete_=True, type='NpyLatentDataset', "
                f"features_dir={osp.abspath(data) + '/features'!r}, "
                f"labels_dir={osp.abspath(data) + '/labels'!r}))\n")
    # dist_train.sh runs `python`: this interpreter, its environment activated or not
    path = osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', '')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PORT': str(args.port), 'PATH': path}
    proc = subprocess.Popen(
        ['bash', osp.join(ROOT, 'tools/dist_train.sh'), osp.abspath(config), str(args.nproc),
         '--work-dir', run, '--cfg-options', *options],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state = dict(iter=0, tail=[])

    def read_log():
        for line in proc.stdout:
            state['tail'] = (state['tail'] + [line])[-30:]
            match = _ITER.search(line)
            if match:
                state['iter'] = int(match.group(1))

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    # dist_train.sh execs python -m torch.distributed.run: proc is the launcher itself
    # -> ranks -> workers
    samples, start = [], time.time()
    while proc.poll() is None:
        launcher = proc.pid
        if launcher is not None and state['iter'] > 0:
            ranks = sample(launcher)
            if ranks:
                samples.append((time.time() - start, state['iter'], ranks))
        time.sleep(args.interval)
    reader.join(timeout=10)
    if proc.returncode != 0:
        print(''.join(state['tail']), file=sys.stderr)
        return proc.returncode

    # Leave out warm-up, and the end (workers exit once the last batch is drawn).
    first_counted = args.warmup * args.iters
    kept = [s for s in samples if first_counted <= s[1] < args.iters
            and all(r[3] == args.workers for r in s[2].values())
            and len(s[2]) == args.nproc]
    if not kept:  # (the log names an iteration every 10: a short run has none)
        raise SystemExit(f'soak.py: error: no memory sample after the warm-up of '
                         f'{args.iters} iterations (--warmup {args.warmup}; the log names '
                         'an iteration every 10): give more --iters, e.g. 100')
    if len(kept) < 3:
        print(f'soak.py: note: {len(kept)} samples: the slopes rest on too few points to '
              'tell anything; give more --iters', file=sys.stderr)
    rank_pids = sorted({pid for _, _, ranks in kept for pid in ranks})
    its = [it for _, it, _ in kept]
    per_rank = []
    for pid in rank_pids:
        series = dict(rss=[ranks[pid][0] for _, _, ranks in kept],
                      workers_rss=[ranks[pid][4] for _, _, ranks in kept],
                      workers_pss=[ranks[pid][2] for _, _, ranks in kept])
        per_rank.append(summarise(its, series))
    totals = [sum(r[1] + r[2] for r in ranks.values()) for _, _, ranks in kept]
    result = dict(
        iters=args.iters, nproc=args.nproc, workers=args.workers,
        batch_size=args.batch_size, seconds=round(time.time() - start, 1),
        samples=len(kept), iters_counted=[min(its), max(its)] if its else None,
        total_pss=summarise(its, dict(pss=totals)), ranks=per_rank)
    print(json.dumps(result, indent=2))
    if args.out:  # with the raw samples: iteration, then KiB per rank as in sample()
        result['series'] = [[it, [ranks[pid] for pid in rank_pids]] for _, it, ranks in kept]
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
