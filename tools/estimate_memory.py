"""Peak GPU memory of a config's training step, and the largest batch a card holds,
counted on fake tensors (no GPU, nothing computed; seconds an estimate even for XL video
models, ~6 s of CPU for VideoDiT-XL/2 on 2 cores, under a minute with ZeRO-3; a
``--budget-gb`` search runs ~7 estimates per setting: docs/benchmarks.md).

    python tools/estimate_memory.py CONFIG [--precision bf16] [--batch-size 1 5 8] \
        [--grad-checkpointing 0 2 1] [--budget-gb 24 48 80] [--headroom 0.1] \
        [--gpus N] [--deepspeed deepspeed_zero2 | --fsdp [fsdp_bf16]] [--text-len L] \
        [--max-batch 256] [--measure cuda] [--json FILE] [--cfg-options KEY=VALUE ...]

For every ``--grad-checkpointing`` setting (default: the config's, marked "(config)")
it prints the peak at each ``--batch-size`` (default: the config's) with its parts (GiB,
or MiB / KiB below 1 GiB; ``--json`` in GiB, with the setting counted: K or 'selective',
the config's resolved as the table names it), and with
``--budget-gb`` the largest batch per card that leaves ``--headroom`` of the card free
for the CUDA context and the caching allocator ("N+": ``--max-batch`` N fits). Without
``--precision`` it counts what the config's ``optim_wrapper`` trains in, and says so in
one line (a plain ``OptimWrapper``: fp32, though ``tools/train.py --amp`` trains it in
bf16, fp16 on GPUs without bf16: give ``--precision bf16`` for that). The step is
``tools/train.py``'s on one GPU (see :mod:`mmsora.utils.memory_estimate`); ``--gpus N``
adds DDP's gradient buckets, and divides a config's ``global_batch_size`` as
``tools/train.py`` does on N processes (over the accumulation steps too;
``--batch-size`` counts other batches instead); gradient accumulation
(``optim_wrapper.accumulative_counts``, or a DeepSpeed strategy's own
``gradient_accumulation_steps``) adds the gradients kept through the next micro-batch.
``--deepspeed PRESET`` (or a config with a DeepSpeed ``strategy``) counts
``tools/train.py --deepspeed``'s step instead: ZeRO-1/2 partitions over ``--gpus``,
their reduction buckets and, with offload, what stays in host memory
(:mod:`mmsora.utils.zero_memory`); ZeRO-3's step is DeepSpeed's own, run over fake
collectives (:mod:`mmsora.utils.zero3_memory`; without offload).
``--fsdp [PRESET]`` (or a config with an FSDP ``strategy``) counts ``tools/train.py
--fsdp``'s step on one of ``--gpus`` processes: torch's FSDP itself runs it over fake
collectives (:mod:`mmsora.utils.fsdp_memory`), with the preset's MixedPrecision
(``fsdp_bf16``). ``--cfg-options strategy.KEY=VALUE`` set the preset, as in
``tools/train.py``; a DeepSpeed ``train_batch_size`` number that is not the micro-batch
x accumulation x ``--gpus`` is refused, as ``tools/train.py`` refuses it.
``--measure cuda`` runs the same steps for real on the GPU and prints the allocator's
peak beside each estimate (not with ZeRO-1/2; with FSDP and ZeRO-3 on one GPU, their
collectives faked).
"""
import json
import sys

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import (ArgumentParser, UserError, check_output_path, checkpointing_setting,
                              run_cli)
from mmsora.utils.config_loading import load_config, parse_config_and_preset

PRECISIONS = ('fp32', 'bf16', 'fp16')


def parse_args(argv=None):
    parser = ArgumentParser(description='Estimate training memory of a config')
    parser.add_argument('config', nargs='?')
    parser.add_argument('--precision', choices=PRECISIONS,
                        help='bf16/fp16: autocast over fp32 weights (tools/train.py '
                        '--amp); default: what the config\'s optim_wrapper trains in')
    parser.add_argument('--batch-size', type=int, nargs='+',
                        help='samples per GPU (default: the config\'s '
                        'global_batch_size over --gpus and the accumulation steps, as '
                        'tools/train.py splits it, else train_dataloader.batch_size)')
    parser.add_argument('--grad-checkpointing', type=checkpointing_setting, nargs='+',
                        metavar='K', help='recompute every K-th block (1: all, 0: none), '
                        'or selective (only the elementwise ops of every block); several '
                        'values compare them (default: the config\'s)')
    parser.add_argument('--budget-gb', type=float, nargs='+', metavar='GIB',
                        help='card memory in GiB (RTX 4090: 24, A6000: 48, A100/H100: '
                        '80): print the largest batch that fits each')
    parser.add_argument('--headroom', type=float, default=0.1,
                        help='fraction of the card kept free (CUDA context, allocator '
                        'cache); default 0.1')
    parser.add_argument('--max-batch', type=int, default=256,
                        help='largest batch size tried by --budget-gb')
    parser.add_argument('--gpus', type=int, default=1,
                        help='data-parallel GPUs: above 1, DDP\'s gradient buckets are '
                        'added (one more copy of the trainable weights); with '
                        '--deepspeed / --fsdp the processes it partitions over')
    parser.add_argument('--deepspeed', metavar='PRESET',
                        help='count DeepSpeed ZeRO\'s step over --gpus processes: '
                        'deepspeed_zero1, deepspeed_zero2, deepspeed_zero2_offload, '
                        'deepspeed_zero3 '
                        '(configs/_base_/strategies) or a file, as tools/train.py '
                        '--deepspeed; --precision is the dtype DeepSpeed trains in')
    parser.add_argument('--fsdp', nargs='?', const='fsdp', metavar='PRESET',
                        help='count PyTorch FSDP\'s step (tools/train.py --fsdp '
                        '[PRESET]: fsdp, fsdp_bf16 or a file) on one of --gpus '
                        'processes')
    parser.add_argument('--text-len', type=int, help='text tokens per sample of a '
                        'text-conditioned model (default: its null caption\'s, or 77)')
    parser.add_argument('--measure', choices=['cuda', 'cpu'],
                        help='also run each step for real there and print its peak '
                        'beside the estimate (CUDA: torch.cuda.max_memory_allocated; '
                        'CPU: the same count on real tensors)')
    parser.add_argument('--json', metavar='FILE', help='also write the results here')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE')
    return parse_config_and_preset(parser, argv)


def _checkpointing_label(k, cfg=None) -> str:
    """'none', 'every block', 'every 2nd block', ..., 'selective'; None: the config's
    setting, named and marked '(config)' (read from ``cfg``), e.g. 'every block
    (config)'."""
    if k is None:
        return f'{_checkpointing_label(_configured(cfg))} (config)'
    if k in (0, 1, 'selective'):
        return {0: 'none', 1: 'every block', 'selective': 'selective'}[k]
    suffix = 'th' if 10 <= k % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(k % 10, 'th')
    return f'every {k}{suffix} block'


def _configured(cfg):
    """The denoiser's grad_checkpointing as the config builds it
    (:func:`~mmsora.utils.memory_estimate.configured_grad_checkpointing`, which
    tools/benchmark.py records too)."""
    from mmsora.utils.memory_estimate import configured_grad_checkpointing
    return configured_grad_checkpointing(cfg)


def _size(gib: float) -> str:
    """A figure given in GiB, readable at any size: GiB to 2 decimals from about 1 GiB
    up, else MiB or KiB to 3 significant figures (the tiny models' are KiB)."""
    if gib == 0:
        return '0'
    for unit, scale in (('GiB', 1), ('MiB', 2 ** 10), ('KiB', 2 ** 20)):
        if abs(gib) * scale >= 999.5 / 1024:  # (999.5 MiB and up print as 0.98 GiB)
            return f'{gib:.2f} GiB' if unit == 'GiB' else f'{gib * scale:.3g} {unit}'
    return f'{gib * 2 ** 30:.0f} B'


def _precision(args, cfg):
    """``(precision counted, the line that says where it comes from)``: ``--precision``
    (the header line names it: no line), else what the config's optim_wrapper trains
    in, as ``tools/train.py`` without ``--amp`` does; a full-precision wrapper's line
    names ``--precision bf16``, what ``tools/train.py --amp`` trains in (fp16 on a GPU
    without bf16: :func:`~mmsora.engine.strategies.apply_amp`)."""
    from mmsora.engine.strategies import amp_dtype_of
    if args.precision:
        return args.precision, None
    wrapper = cfg.optim_wrapper
    dtype = amp_dtype_of(wrapper)
    precision = {None: 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}[dtype]
    kind = wrapper.get('type', 'OptimWrapper')
    if dtype is None:
        return precision, (f"precision: fp32, as the config's optim_wrapper ({kind}) "
                           'trains; tools/train.py --amp trains it in bf16 (fp16 on GPUs '
                           'without bf16: V100, T4): give --precision bf16 (or fp16) to '
                           'count that')
    return precision, (f"precision: {precision}, as the config's optim_wrapper ({kind}, "
                       f'{dtype}) trains; --precision fp32|bf16|fp16 counts another')


def _counted(cfg, k):
    """What ``--json`` records of the checkpointing counted: the setting the table
    names, as ``--grad-checkpointing`` takes it (K, 0: none, or 'selective'); None (the
    config's) resolved as the table's '(config)' row is, the denoiser's default
    included (it recorded null there)."""
    k = _configured(cfg) if k is None else k
    return int(k) if isinstance(k, bool) else k


def _one_gpu_note(deepspeed, fsdp) -> str:
    """What FSDP / ZeRO do on one process: shard nothing; ZeRO's offload still moves
    the float32 master weights and the optimizer states to host memory."""
    zero = (deepspeed or {}).get('zero_optimization') or {}
    offload = (zero.get('offload_optimizer') or {}).get('device', 'none')
    if offload not in (None, 'none'):
        return (f'note: ZeRO-{zero.get("stage")} over --gpus 1 shards nothing, but its '
                'offload still moves the float32 master weights, optimizer states and '
                f'gradients off the GPU (offload_optimizer.device={offload}: the host '
                'column); give --gpus N for N processes')
    return (f'note: {"FSDP" if fsdp else "ZeRO"} over --gpus 1 shards nothing (the whole '
            'model on one process); give --gpus N for N processes')


def _strategy(args, cfg):
    """``(deepspeed, fsdp)``: the DeepSpeed config or the FSDP strategy to count
    (``--deepspeed`` / ``--fsdp``, else the config's strategy), or None for the
    Runner's step; refuses what the tool does not model. The strategy is put in
    ``cfg.strategy`` (:func:`~mmsora.engine.strategies.train_options.set_run_strategy`,
    as ``tools/train.py`` does first), where the global batch split and the table's
    micro-batches read its accumulation."""
    from mmsora.engine.strategies.train_options import set_run_strategy
    strategy = set_run_strategy(cfg, args.deepspeed, args.fsdp, args.cfg_options)
    if strategy is None:
        return None, None
    if strategy['type'] == 'FSDPStrategy':
        from mmsora.utils.fsdp_memory import check_fsdp_strategy
        try:
            check_fsdp_strategy(strategy)
        except ValueError as e:
            raise UserError(str(e)) from None
        return None, strategy
    ds = dict(strategy.get('config') or {})
    if strategy.get('gradient_accumulation_steps') is not None:  # mmengine's
        # DeepSpeedStrategy puts its own argument over its config's (the count left it
        # out, while the split and the table named it)
        ds['gradient_accumulation_steps'] = strategy['gradient_accumulation_steps']
    stage = (ds.get('zero_optimization') or {}).get('stage', 0)
    if stage not in (1, 2, 3):
        raise UserError(f'DeepSpeed ZeRO stage {stage} is not modelled (stages 1, 2 and '
                        '3 are)')
    if stage == 3:
        from mmsora.utils.zero3_memory import check_zero3_config
        try:
            check_zero3_config(ds)
        except ValueError as e:
            raise UserError(str(e)) from None
    if args.measure and stage != 3:
        raise UserError('--measure does not run ZeRO-1/2\'s step (it is counted in '
                        'closed form): drop --measure (or measure the config without '
                        'its DeepSpeed strategy)')
    return ds, None


def _check(args, cfg):
    if args.headroom < 0 or args.headroom >= 1:
        raise UserError(f'--headroom is a fraction of the card in [0, 1), got {args.headroom}')
    check_output_path(args.json, '--json')
    for budget in args.budget_gb or []:
        if budget <= 0:
            raise UserError(f'--budget-gb: a card holds more than 0 GiB, got {budget:g}')
    for value in (args.batch_size or []) + [args.max_batch]:
        if value < 1:
            raise UserError(f'batch sizes must be >= 1, got {value}')
    if args.gpus < 1:
        raise UserError(f'--gpus must be >= 1, got {args.gpus}')
    if args.measure == 'cuda':
        import torch
        if not torch.cuda.is_available():
            raise UserError('--measure cuda: no CUDA device on this machine')


def _apply_global_batch(args, cfg):
    """A config's ``global_batch_size`` split over ``--gpus`` as ``tools/train.py``
    splits it over its processes (and accumulation steps), unless ``--batch-size`` is
    given; one line says which batch is counted. (The config's per-process
    ``train_dataloader.batch_size`` was counted instead, without a word.)"""
    total = cfg.get('global_batch_size')
    if total is None:
        return
    if args.batch_size:
        print(f'note: --batch-size {" ".join(map(str, args.batch_size))} is counted, not '
              f'the config\'s global_batch_size={total}', flush=True)
        return
    from mmsora.engine.strategies import accumulation_of, apply_global_batch
    per_process = apply_global_batch(cfg, args.gpus)
    accum = accumulation_of(cfg)
    print(f'global_batch_size={total}: a batch of {per_process} per GPU on each of --gpus '
          f'{args.gpus}' + (f' x {accum} accumulation steps' if accum > 1 else '')
          + ', as tools/train.py trains it', flush=True)


def _value_read_errors() -> tuple:
    from torch._subclasses.fake_tensor import (DataDependentOutputException,
                                               DynamicOutputShapeException)
    return DataDependentOutputException, DynamicOutputShapeException


_VALUE_READ = _value_read_errors()


def _value_read_message(error) -> str:
    """The step is counted on fake tensors (shapes, no values): a model that reads a
    tensor's value (``float(t.mean())``, ``.item()``, a shape from data) cannot be
    counted so. Names the line of the model's code that read it."""
    import os.path as osp
    import traceback

    import torch
    from mmsora.utils import memory_estimate
    torch_dir = osp.dirname(torch.__file__)
    counter = memory_estimate.__file__  # (its dispatch mode runs every operation)
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(torch_dir) and 'site-packages' not in f.filename
              and f.filename != counter]
    where = f' at {frames[-1].filename}:{frames[-1].lineno}' if frames else ''
    return (f'the step is counted on fake tensors (shapes, no values), and the model reads '
            f'a tensor\'s value{where} ({type(error).__name__}): measure a real step '
            'instead: tools/benchmark.py CONFIG --device cuda (its peak memory)')


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config)
    apply_cfg_options(cfg, args.cfg_options)
    _check(args, cfg)
    # (first: a --deepspeed preset's own accumulation is in the config from here)
    deepspeed, fsdp = _strategy(args, cfg)
    _apply_global_batch(args, cfg)
    from mmsora.utils.memory_estimate import (estimate_training_memory,
                                              largest_fitting_batch, usable_bytes)
    precision, precision_line = _precision(args, cfg)
    if deepspeed and deepspeed['zero_optimization']['stage'] == 3 and precision == 'fp16':
        from mmsora.utils.zero3_memory import FP16_REFUSAL
        raise UserError(FP16_REFUSAL)
    if (fsdp or deepspeed) and args.gpus == 1:  # easy to forget: nothing is sharded
        print(_one_gpu_note(deepspeed, fsdp), flush=True)
    batch_sizes = args.batch_size or [cfg.train_dataloader.batch_size]
    settings = args.grad_checkpointing or [None]
    cache = {}

    def estimate(batch_size, k):
        if (batch_size, k) not in cache:
            try:
                cache[batch_size, k] = estimate_training_memory(
                    cfg, batch_size, amp=precision, grad_checkpointing=k,
                    text_len=args.text_len, gpus=args.gpus, deepspeed=deepspeed, fsdp=fsdp)
            except _VALUE_READ as e:  # (a torch traceback ending in
                # DataDependentOutputException, for a denoiser of one's own)
                raise UserError(_value_read_message(e)) from None
        return cache[batch_size, k]

    strategy = ''
    mixed = ((fsdp or {}).get('model_wrapper') or {}).get('mixed_precision')
    if mixed and mixed.get('param_dtype'):  # the step's compute dtype, beside the wrapper's
        precision_label = f"{precision} wrapper, FSDP MixedPrecision {mixed['param_dtype']}"
    else:
        precision_label = precision
    if deepspeed:
        source = args.deepspeed or "the config's strategy"
        strategy = f", DeepSpeed ZeRO-{deepspeed['zero_optimization']['stage']} ({source})"
    elif fsdp:
        source = (('--fsdp' if args.fsdp == 'fsdp' else f'--fsdp {args.fsdp}')
                  if args.fsdp is not None else "the config's strategy")
        strategy = f', FSDP ({source})'
    from mmsora.engine.strategies import accumulation_of
    accumulation = accumulation_of(cfg)
    if accumulation > 1:  # the gradients stay through the next micro-batch
        strategy += f', {accumulation} micro-batches per optimizer step'
    if precision_line:  # (the header names it too, without where it comes from)
        print(precision_line)
    print(f'{args.config}: {cfg.model.denoiser.type}, latents {tuple(cfg.model.latent_shape)}, '
          f'{precision_label}, {args.gpus} GPU(s){strategy}; tensors per GPU at the peak of a '
          'training step')
    keys = (('zero_buffers', 'host') if deepspeed else () if fsdp else ('ddp_buckets',))
    labels = {'zero_buffers': 'zero', 'host': 'host', 'ddp_buckets': 'ddp'}
    extra = tuple(labels[key] for key in keys)
    header = ('checkpointing', 'batch', 'peak', 'weights', 'ema', 'optimizer', 'step',
              *extra) + (('measured',) if args.measure else ())
    rows, results = [header], []
    for k in settings:
        for n in batch_sizes:
            e = estimate(n, k).as_gib()
            row = (_checkpointing_label(k, cfg), str(n),
                   *(_size(e[key]) for key in ('peak', 'weights', 'ema', 'optimizer_states',
                                               'step', *keys)))
            if args.measure:
                real = estimate_training_memory(
                    cfg, n, amp=precision, grad_checkpointing=k, text_len=args.text_len,
                    gpus=args.gpus, fake=False, device=args.measure, deepspeed=deepspeed,
                    fsdp=fsdp).as_gib()
                e['measured'] = real['measured'] or real['peak']
                row += (_size(e['measured']),)
            rows.append(row)
            results.append(dict(grad_checkpointing=_counted(cfg, k),
                                precision=precision_label, **e))
    print(_table(rows))
    zero3 = bool(deepspeed) and deepspeed['zero_optimization']['stage'] == 3
    print('step: gradients, activations and temporaries at the peak (with the batch)'
          + ('; weights, ema, optimizer: this process\'s partitions (optimizer: the '
             'float32 master weights and their states); zero: the reduction bucket and '
             'gradient partition the engine keeps from start-up; the weights ZeRO-3 '
             'gathers are in step; at start-up DeepSpeed puts the whole module on the '
             f"GPU ({_size(results[0]['startup'])}), which must fit too"
             if zero3 else
             '; zero: DeepSpeed\'s reduction buckets and reduced gradients (ZeRO-1 '
             'with accumulation: and the whole gradients), held from the backward to '
             'the step (in step where they meet the peak); host: '
             'offloaded master weights, optimizer states, gradients and EMA (not in '
             'peak)'
             if deepspeed else '; weights, ema, optimizer: this process\'s shards '
             '(optimizer: with the gradient shard FSDP keeps to the next forward); '
             'the units FSDP gathers are in step' if fsdp else ''))
    if None in settings:
        print("(config): the config's model.denoiser.grad_checkpointing (else the "
              "denoiser's default); --grad-checkpointing K counts another")

    largest = []
    if args.budget_gb:
        rows = [('checkpointing',) + tuple(f'{b:g} GiB card' for b in args.budget_gb)]
        for k in settings:
            row = [_checkpointing_label(k, cfg)]
            for budget in args.budget_gb:
                best = largest_fitting_batch(lambda n: max(estimate(n, k).peak,
                                                           estimate(n, k).startup),
                                             usable_bytes(budget, args.headroom),
                                             limit=args.max_batch)
                largest.append(dict(grad_checkpointing=_counted(cfg, k), budget_gib=budget,
                                    headroom=args.headroom, batch_size=best))
                row.append(f'{best}' + ('+' if best == args.max_batch else ''))
            rows.append(tuple(row))
        print(f'\nlargest batch per GPU with {args.headroom:.0%} of the card free:')
        print(_table(rows))
        marks = [f'{args.max_batch}+: --max-batch {args.max_batch} fits, the largest tried '
                 '(a larger --max-batch searches further)'
                 if any(row['batch_size'] == args.max_batch for row in largest) else '',
                 '0: not even one sample fits the card'
                 if any(row['batch_size'] == 0 for row in largest) else '']
        if any(marks):
            print('; '.join(mark for mark in marks if mark))
    out = dict(config=args.config, units='GiB', estimates=results, largest_batch=largest)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=2)
    return out


def _table(rows) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


if __name__ == '__main__':
    sys.exit(run_cli(main))
