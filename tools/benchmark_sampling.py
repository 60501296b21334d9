"""Time sampling as tools/infer.py samples, at each ``--precision``.

    python tools/benchmark_sampling.py CONFIG [--checkpoint CKPT] [--batch-size 8] \\
        [--sampler ddim] [--steps 50] [--cfg-scale 4] [--precision fp32 tf32 bf16] \\
        [--device cuda] [--repeats 3] [--json FILE]
    python tools/benchmark_sampling.py --model DiT-XL/2 --input-size 32 --device cuda

A timed call is ``LatentDiffusion.sample`` of one batch: every denoising step (with
guidance, the doubled batch of DiT's ``forward_with_cfg``), from the seeded noise to
the latents; the VAE's decode and the text encoder are left out (the model is the
config's without them; text-conditioned models get random text embeddings of their
null caption's length, ``--text-len`` for another). Each precision first samples
once with 2 steps (kernels chosen, memory pools grown), then ``--repeats`` timed
calls; the best is reported: seconds a batch, samples/s, milliseconds a model
evaluation (NFE), model TFLOP/s (forward FLOPs counted from the operators, times
the batch, the guidance's doubling and the NFE) and MFU against the card's peak for
that precision, peak memory in MiB during the timed calls (the table's
``peak_cuda_allocated_MiB``: CUDA's allocated tensors; ``peak_rss_MiB``: this process's
resident set, its VmHWM, model and interpreter included; without ``/proc``, where it
cannot be reset, ``ru_maxrss``: the process's peak since it started, its
``peak_rss_source`` saying so; in ``--json`` ``peak_mem_mb`` with ``peak_mem_kind``, as
tools/benchmark.py names them), and how far the precision's samples lie from the first
precision's, from the same noise (``rel_max_diff``: the largest difference over the
reference samples' largest magnitude). Sampler, steps, guidance
and the sampler's options are the config's ``sample_cfg`` under the command line's,
as tools/infer.py takes them (the objective's own sampler where none is given).

Without ``--checkpoint`` the weights are random (the zero-initialised adaLN and
output layers filled, so that every block computes and the precisions' samples
differ as a trained model's would in kind).
"""
import inspect
import json
import sys
import time

import torch

from mmsora.models.latent_diffusion import SAMPLING_PRECISIONS
from mmsora.utils.cli import (ArgumentParser, UserError, add_malloc_option, check_at_least,
                              check_output_path, note, run_cli)

PROG = 'benchmark_sampling.py'


def parse_args(argv=None):
    p = ArgumentParser(prog=PROG, description='Time sampling at each precision')
    p.add_argument('config', nargs='?', help="config whose model is sampled (default: "
                   "DiT's ImageNet recipe at --model's size)")
    p.add_argument('--model', default='DiT-S/2', help='DiT preset when no CONFIG')
    p.add_argument('--input-size', type=int, default=32, help='latent size for --model')
    p.add_argument('--num-classes', type=int, default=1000, help='for --model')
    p.add_argument('--checkpoint', help="weights to sample with (as tools/infer.py "
                   "--checkpoint; default: random weights)")
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--sampler', help="default: the config's sample_cfg.sampler, else ddim")
    p.add_argument('--steps', type=int, help="default: the config's sample_cfg.num_steps, "
                   'else 50')
    p.add_argument('--cfg-scale', type=float, help="default: the config's "
                   'sample_cfg.cfg_scale, else 4.0 (1 = no guidance)')
    p.add_argument('--precision', nargs='+', choices=list(SAMPLING_PRECISIONS),
                   help='precisions to time, the first the reference of the others\' '
                   'differences (default: fp32 tf32 bf16 on a GPU, fp32 bf16 on the CPU)')
    p.add_argument('--repeats', type=int, default=3, help='timed calls per precision')
    p.add_argument('--device', choices=['cpu', 'cuda'],
                   default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--threads', type=int, help="torch CPU threads (default: torch's)")
    p.add_argument('--text-len', type=int, help='text tokens per sample of a '
                   "text-conditioned model (default: its null caption's length)")
    p.add_argument('--peak-tflops', type=float, help="the device's peak TFLOP/s for MFU "
                   '(default: from the table of known cards)')
    p.add_argument('--seed', type=int, default=0, help='sample i starts from seed SEED + i')
    p.add_argument('--json', metavar='FILE', help='write the results here as JSON')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='override config entries')
    add_malloc_option(p)
    return p.parse_args(argv)


def check_args(args) -> None:
    check_at_least(args, ('batch_size', 'steps', 'repeats', 'threads', 'text_len',
                          'input_size', 'num_classes'))
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise UserError(f'--peak-tflops must be > 0, got {args.peak_tflops}')
    if torch.device(args.device).type == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device on this machine')
    if args.precision and len(set(args.precision)) != len(args.precision):
        raise UserError(f'--precision names one twice: {" ".join(args.precision)}')
    check_output_path(args.json, '--json')
    if not args.config:
        from mmsora.models import DIT_PRESETS
        if args.model not in DIT_PRESETS:
            raise UserError(f'--model {args.model!r}: choose from {", ".join(DIT_PRESETS)}')


def build_model(args):
    """The model to sample (no VAE, no text encoder) on the device, and the config's
    ``sample_cfg``."""
    from mmengine.registry import init_default_scope

    import mmsora.diffusion  # noqa: F401  (fill the registries)
    import mmsora.models  # noqa: F401  (fill the registries)
    from mmsora.registry import MODELS
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.training_inputs import dit_recipe_model_cfg, training_model_cfg
    init_default_scope('mmsora')
    if args.config:
        cfg = load_config(args.config)
        apply_cfg_options(cfg, args.cfg_options)
        model_cfg, sample_cfg = training_model_cfg(cfg), dict(cfg.get('sample_cfg') or {})
    else:
        if args.cfg_options:
            raise UserError('--cfg-options overrides a config: give CONFIG')
        model_cfg = dit_recipe_model_cfg(args.model, args.input_size, args.num_classes)
        sample_cfg = {}
    torch.manual_seed(args.seed)
    model = MODELS.build(model_cfg)
    if args.checkpoint:
        from mmsora.apis.inference import load_weights
        try:
            load_weights(model, args.checkpoint, trained_option=None)  # (no --no-ema)
        except (FileNotFoundError, ValueError) as e:
            raise UserError(f'--checkpoint {args.checkpoint}: {e}') from None
    else:
        with torch.no_grad():  # adaLN-Zero and the output layer start at zero
            for p in model.denoiser.parameters():
                if p.dim() and not p.any():
                    p.normal_(0, 0.02)
    return model.to(args.device).eval(), sample_cfg


def sampling_settings(args, model, sample_cfg) -> dict:
    """Sampler, steps, guidance and the sampler's options as tools/infer.py takes them:
    the command line's over the config's ``sample_cfg`` (for ``--model``, DiT's
    guidance scale 4), the objective's default sampler where none is given, 50 steps
    where neither gives them; checked against the objective before anything is timed."""
    from mmsora.diffusion.scheduler_sampling import (NOT_SAMPLE_ARGS, check_sample_settings,
                                                     merge_sample_cfg)
    settings = {k: v for k, v in merge_sample_cfg(sample_cfg, sampler=args.sampler).items()
                if k not in (*NOT_SAMPLE_ARGS, 'precision', 'seeds')}
    settings['num_steps'] = args.steps or settings.get('num_steps') or 50
    settings['cfg_scale'] = args.cfg_scale if args.cfg_scale is not None else \
        settings.get('cfg_scale', 1.0 if args.config else 4.0)
    try:
        check_sample_settings(model.diffusion, settings)
    except ValueError as e:
        raise UserError(str(e)) from None
    params = inspect.signature(model.diffusion.sample).parameters
    if not settings.get('sampler') and 'sampler' in params:
        settings['sampler'] = params['sampler'].default
    return settings


def conditions(model, n, text_len):
    """``model.sample``'s conditioning of ``n`` samples: labels, or text embeddings."""
    from mmsora.utils.training_inputs import denoiser_kwargs
    kwargs = denoiser_kwargs(model, n, text_len)
    if 'mask' not in kwargs:
        return dict(labels=[i % model.num_classes for i in range(n)])
    out = dict(text_embeds=kwargs['y'], text_mask=kwargs['mask'])
    if 'pooled' in kwargs:
        out['pooled_text_embeds'] = kwargs['pooled']
    return out


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_precision(model, precision, settings, args, device):
    """Best seconds of ``--repeats`` calls, the NFE, peak memory (``peak_mem_mb`` in MiB
    and its ``peak_mem_kind``, :func:`~mmsora.utils.process_memory.peak_memory`) and the
    samples."""
    from mmsora.utils.process_memory import peak_memory, reset_peak_rss
    model.sample(**dict(settings, num_steps=min(2, settings['num_steps'])),
                 precision=precision)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
        was_reset = True
    else:  # (not without /proc: then a peak since the process started)
        was_reset = reset_peak_rss()
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        z = model.sample(**settings, precision=precision)
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = peak_memory(device, was_reset)
    # (an objective of one's own may not count its model evaluations)
    return min(times), times, getattr(model.diffusion, 'last_nfe', None), peak, z.float().cpu()


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmsora.utils.cli import keep_freed_memory_on_cpu
    device = torch.device(args.device)
    keep_freed_memory_on_cpu(args, device.type == 'cpu')
    model, sample_cfg = build_model(args)
    precisions = args.precision or (['fp32', 'tf32', 'bf16'] if device.type == 'cuda'
                                    else ['fp32', 'bf16'])
    n = args.batch_size
    cond = conditions(model, n, args.text_len)
    settings = sampling_settings(args, model, sample_cfg)
    settings.update(seeds=[args.seed + i for i in range(n)], decode=False, **cond)
    from mmsora.utils.training_inputs import forward_flops_per_sample
    try:
        flops = forward_flops_per_sample(model, device, args.text_len)
    except Exception as e:  # a denoiser of one's own that torch cannot count
        flops = None
        note(f'no TFLOP/s: the forward FLOPs could not be counted ({type(e).__name__}: {e})')
    from mmsora.utils.flops import peak_tflops
    results, reference = [], None
    for precision in precisions:
        best, times, nfe, peak, z = time_precision(model, precision, settings, args, device)
        row = dict(precision=precision, s_per_batch=best, samples_per_s=n / best,
                   ms_per_nfe=1000 * best / nfe if nfe else None, nfe=nfe,
                   **peak, runs_s=[round(t, 4) for t in times])
        if flops and nfe:
            guided = 2 if settings['cfg_scale'] != 1.0 else 1
            row['tflops_per_s'] = flops * n * guided * nfe / best / 1e12
            peak_flops = args.peak_tflops or (peak_tflops(
                torch.cuda.get_device_name(device), {'tf32': 'fp32'}.get(precision, precision),
                tf32=precision == 'tf32') if device.type == 'cuda' else None)
            if peak_flops:
                row.update(peak_tflops=peak_flops, mfu=row['tflops_per_s'] / peak_flops)
        if reference is None:
            reference = z
        scale = float(reference.abs().max()) or 1.0
        row['rel_max_diff'] = float((z - reference).abs().max()) / scale
        results.append(row)
    report(args, model, settings, precisions, results)
    return results


def report(args, model, settings, precisions, results) -> None:
    from mmsora.utils.process_memory import NOT_RESET, peak_mem_header
    name = args.config or f'{args.model} input_size={args.input_size}'
    shown = {k: v for k, v in settings.items()
             if k not in ('seeds', 'decode', 'labels', 'text_embeds', 'text_mask',
                          'pooled_text_embeds')}
    print(f'{name}: latent {"x".join(map(str, model.latent_shape))} '
          f'batch_size={args.batch_size} '
          + ' '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
                     for k, v in shown.items())
          + f' device={args.device} torch={torch.__version__} repeats={args.repeats}')
    # named as tools/benchmark.py's column: peak_rss_MiB / peak_cuda_allocated_MiB
    peak = peak_mem_header(r.get('peak_mem_kind') for r in results)
    print(f'{"precision":>9}  {"s/batch":>8}  {"samples/s":>9}  {"NFE":>4}  {"ms/NFE":>8}  '
          f'{"TFLOP/s":>8}  {"MFU":>6}  {peak}  rel. max|diff| vs {precisions[0]}')
    for r in results:
        tflops = f'{r["tflops_per_s"]:8.3f}' if 'tflops_per_s' in r else f'{"-":>8}'
        mfu = f'{r["mfu"]:6.1%}' if 'mfu' in r else f'{"-":>6}'
        print(f'{r["precision"]:>9}  {r["s_per_batch"]:8.3f}  {r["samples_per_s"]:9.2f}  '
              f'{r["nfe"] or "-":>4}  {r["ms_per_nfe"] or float("nan"):8.1f}  {tflops}  {mfu}  '
              f'{r["peak_mem_mb"]:{len(peak)}.0f}  {r["rel_max_diff"]:.2e}')
    if any(r.get('peak_rss_source', '').endswith(tuple(NOT_RESET.values()))
           for r in results):
        note(f"{peak} is a peak since the process started, not each precision's (no "
             '/proc/self/clear_refs to reset it): run one --precision at a time for its own')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(config=args.config, model=None if args.config else args.model,
                           batch_size=args.batch_size, device=args.device, settings=shown,
                           results=results), f, indent=2)


if __name__ == '__main__':
    sys.exit(run_cli(main))
