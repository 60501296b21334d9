"""Time tools/train.py's training step, optionally next to diffusers' DiT.

    python tools/benchmark.py CONFIG [--batch-size 32] [--device cuda] [--precision bf16]
    python tools/benchmark.py --model DiT-S/2 --input-size 32 --baseline diffusers

A step is the Runner's: ``model.train_step`` on a batch as the latent store's loader
hands it over (random latents of the model's ``latent_shape`` with labels, or text
embeddings), i.e. the data preprocessor's copy to the device, the config's objective
(``model.diffusion``: DiT's MSE + VLB, SiT's transport, ...), the backward pass and the
config's optimizer wrapper (its optimizer, gradient clipping, and with ``--precision``
the autocast ``tools/train.py --amp`` sets); then the config's EMA hook updates its
average and the logged losses are read back (``.item()``), as the Runner's
RuntimeInfoHook does every step. LossGuardHook (a default hook) reads the loss before
the backward pass and the gradient norm before the optimizer step, as in training.
The model is the config's without its VAE and text encoder (training reads
pre-extracted latents). Without a CONFIG, ``--model`` builds
DiT's ImageNet recipe at that size: Gaussian diffusion with learned sigma, AdamW (lr
1e-4, no weight decay), no clipping, and an EMA only with ``--ema``. Each model runs in
its own subprocess, so peak RSS (CPU: the process's VmHWM, which unlike ``ru_maxrss``
leaves out the parent's memory before ``exec``) / peak allocated memory (CUDA) is that
model's (the table's ``peak_rss_MiB`` / ``peak_cuda_allocated_MiB``; in ``--json``,
``peak_mem_mb`` in MiB, and ``peak_mem_kind``: ``'rss'`` or ``'cuda_allocated'``; on the
CPU ``peak_rss_source``: ``'VmHWM'``, or ``'ru_maxrss'`` where there is no ``/proc``).

FLOPs are counted from the operators of one forward pass
(:func:`mmsora.utils.flops.forward_flops`; the DiT paper's "Gflops" are MACs, so FLOPs
= 2 x MACs), a training step is taken as 3 forward passes, and MFU divides the model
TFLOP/s by the card's dense peak (:data:`mmsora.utils.flops.PEAK_TFLOPS`, or
``--peak-tflops``).
"""
import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

_RESULT_TAG = 'BENCHMARK_RESULT '
_PRECISIONS = {'fp32': None, 'bf16': 'bfloat16', 'fp16': 'float16'}
# --model's batch: the recorded CPU figures (docs/benchmarks.md) were taken at it.
DEFAULT_BATCH_SIZE = 8
FP16_ON_CPU = ('fp16 on the CPU is unscaled fp16 autocast, which tools/train.py never '
               'runs there (its --amp is bf16 on the CPU): give --precision bf16')


def parse_args(argv=None):
    from mmsora.utils.cli import ArgumentParser, add_malloc_option, checkpointing_setting
    parser = ArgumentParser(description='Benchmark training steps')
    parser.add_argument('config', nargs='?', help='training config; its step is timed '
                        '(without one, --model/--input-size pick a DiT preset)')
    parser.add_argument('--model', default='DiT-S/2', help='DiT preset when no CONFIG '
                        'is given (DiT-S/2 ... DiT-XL/8)')
    parser.add_argument('--input-size', type=int, default=32,
                        help='latent size for --model (32 = 256 px images)')
    parser.add_argument('--num-classes', type=int, default=1000, help='for --model')
    parser.add_argument('--steps', type=int, default=10, help='timed steps')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    parser.add_argument('--batch-size', type=int,
                        help='samples per micro-batch (default: with a CONFIG the batch '
                        'tools/train.py trains on one process: global_batch_size over '
                        'the accumulation steps, else train_dataloader.batch_size; '
                        'with --model: 8)')
    parser.add_argument('--device', choices=['cpu', 'cuda'],
                        default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='default: cuda when a GPU is visible, as tools/train.py')
    parser.add_argument('--precision', choices=list(_PRECISIONS),
                        help="bf16/fp16: tools/train.py --amp's autocast over fp32 weights "
                        '(AmpOptimWrapper on CUDA, AutocastOptimWrapper on the CPU); '
                        "default: what the config's optim_wrapper trains in (--model: "
                        'fp32)')
    parser.add_argument('--no-tf32', action='store_true',
                        help='keep float32 matmuls in full fp32 on Ampere and newer '
                        '(TF32 is on by default, as in tools/train.py)')
    add_malloc_option(parser)  # for every model timed, as tools/train.py
    parser.add_argument('--baseline', choices=['diffusers'],
                        help="also time diffusers' DiTTransformer2DModel at the same size, "
                        'in the same step (for a DiT denoiser: --model or a DiT config)')
    parser.add_argument('--json', metavar='FILE', help='write the results here as JSON '
                        '(its folder is made if missing)')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--repeats', type=int, default=1,
                        help='run each model this many times, alternating them, and keep '
                        'each one\'s fastest run (steadier on a shared machine)')
    parser.add_argument('--grad-checkpointing', type=checkpointing_setting, metavar='K',
                        help='set the denoiser\'s grad_checkpointing: recompute every '
                        'K-th block in the backward pass (1: every block, 0: none), or '
                        'selective (only the elementwise ops of every block)')
    parser.add_argument('--attn-backend',
                        choices=['auto', 'sdpa', 'flash_attn', 'xformers'],
                        help='attention kernel of our denoiser (default: the config\'s '
                        'model.attn_backend, else auto: flash-attn or xformers where '
                        'installed and suitable, else PyTorch SDPA)')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the denoiser, as tools/train.py --compile '
                        '(compilation happens in the warm-up steps)')
    parser.add_argument('--interleave', action='store_true',
                        help='with --baseline: both models in one process taking turns '
                        'step by step; reports best and median step and how many step '
                        'pairs each won (no per-model memory)')
    ema = parser.add_mutually_exclusive_group()
    ema.add_argument('--ema', type=float, metavar='MOMENTUM',
                     help="EMAHook's momentum (e.g. 1e-4 as DiT): the config's EMA hook "
                     'gets it, or one is added; default: the config\'s hooks (--model: '
                     'no EMA)')
    ema.add_argument('--no-ema', action='store_true', help="leave the config's EMA out")
    parser.add_argument('--text-len', type=int, help='text tokens per sample of a '
                        'text-conditioned model (default: its null caption\'s, 120)')
    parser.add_argument('--peak-tflops', type=float, help='the device\'s peak TFLOP/s '
                        'for MFU (default: the table in mmsora/utils/flops.py for known '
                        'GPUs; none on the CPU)')
    parser.add_argument('--memory-budget', type=float, metavar='GIB',
                        help='CUDA: cap the caching allocator at this many GiB '
                        '(torch.cuda.set_per_process_memory_fraction), to see on a large '
                        'card whether the step fits a smaller one; one that needs more '
                        'stops with "does not fit"')
    parser.add_argument('--profile', metavar='DIR',
                        help='after the timed steps, profile 2 more of each model '
                        '(torch.profiler) and write DIR/IMPL.txt: the operators by '
                        'their own time on the device and on the host')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config keys, e.g. model.denoiser.depth=4')
    parser.add_argument('--seed', type=int, default=0)
    # Internal: run one implementation in this process and print its result.
    parser.add_argument('--worker', choices=['ours', 'diffusers'], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- #
#                              Config and model                                #
# --------------------------------------------------------------------------- #
def benchmark_config(args):
    """The training config to time: CONFIG with ``--cfg-options``, or DiT's recipe for
    ``--model``; with the command line's precision, EMA, compile and fused AdamW. Fills
    in ``args.batch_size`` and ``args.precision`` where the command line left them."""
    from mmengine.config import Config

    from mmsora.engine.strategies import (amp_dtype_of, apply_amp, apply_speed_options,
                                          drop_amp)
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.training_inputs import dit_recipe_model_cfg, is_ema_hook
    if args.config:
        cfg = load_config(args.config)
    else:
        cfg = Config(dict(
            model=dit_recipe_model_cfg(args.model, args.input_size, args.num_classes),
            optim_wrapper=dict(type='OptimWrapper', optimizer=dict(
                type='AdamW', lr=1e-4, weight_decay=0)),
            # as configs/_base_/default_runtime.py guards every step
            default_hooks=dict(loss_guard=dict(type='LossGuardHook', max_consecutive=5)),
            custom_hooks=[]))
    apply_cfg_options(cfg, args.cfg_options)
    if 'optim_wrapper' not in cfg:
        cfg.optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4))
    if args.batch_size is None:
        args.batch_size = config_batch_size(cfg) if args.config else DEFAULT_BATCH_SIZE
    if args.grad_checkpointing is not None:
        cfg.model.denoiser.grad_checkpointing = args.grad_checkpointing
    if args.attn_backend is not None:
        cfg.model.attn_backend = args.attn_backend
    hooks = [h for h in cfg.get('custom_hooks') or []
             if not (args.no_ema and is_ema_hook(h))]
    if args.ema is not None:
        ema_hooks = [h for h in hooks if is_ema_hook(h)]
        for hook in ema_hooks:
            if not isinstance(hook, dict):
                from mmsora.utils.cli import UserError
                raise UserError('--ema sets the momentum of an EMA hook config; this '
                                'config gives its EMA hook built')
            hook['momentum'] = args.ema
        if not ema_hooks:
            hooks.append(dict(type='EMAHook', momentum=args.ema, update_buffers=True))
    cfg.custom_hooks = hooks
    if args.precision is None:  # the config's (and on this device)
        dtype = amp_dtype_of(cfg.optim_wrapper)
        args.precision = {None: 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}[dtype]
        if args.precision == 'fp16' and args.device == 'cpu':
            from mmsora.utils.cli import UserError
            raise UserError(f'{FP16_ON_CPU} (this config\'s optim_wrapper trains in fp16)')
    if _PRECISIONS[args.precision]:
        apply_amp(cfg, _PRECISIONS[args.precision], args.device)
    else:  # full precision, whatever the config's wrapper autocasts to
        drop_amp(cfg)
    apply_speed_options(cfg, compile=args.compile, device=args.device)
    return cfg


def config_batch_size(cfg):
    """The micro-batch ``tools/train.py`` trains a config in on one process: its
    ``global_batch_size`` over the accumulation steps, else
    ``train_dataloader.batch_size``; :data:`DEFAULT_BATCH_SIZE` for a config that
    gives neither."""
    from mmsora.engine.strategies import apply_global_batch
    per_process = apply_global_batch(cfg, 1)
    if per_process is not None:
        return per_process
    return (cfg.get('train_dataloader') or {}).get('batch_size') or DEFAULT_BATCH_SIZE


def batch_note(args, cfg) -> str:
    """One line saying which batch a CONFIG's step is timed at without --batch-size."""
    total = cfg.get('global_batch_size')
    if total is not None:
        from mmsora.engine.strategies import accumulation_of
        accum = accumulation_of(cfg)  # what train.py's split divides by (apply_global_batch)
        split = f' over {accum} accumulation steps' if accum > 1 else ''
        why = f"the config's global_batch_size={total}{split} on one process"
    elif (cfg.get('train_dataloader') or {}).get('batch_size'):
        why = "the config's train_dataloader.batch_size"
    else:
        why = 'the config gives no train_dataloader.batch_size'
    return (f'batch: {args.batch_size} per micro-batch ({why}, as tools/train.py trains '
            'it; --batch-size N for another)')


def step_hooks(cfg) -> list:
    """The config's hooks that act inside the training step, built: ``LossGuardHook``
    (a default hook: it reads the loss before the backward and the gradient norm
    before the optimizer step), EMA hooks (an averaged model updated after each step)
    and ``CompileDenoiserHook``. The others (logging, LR schedule, sampling,
    checkpoints) run between steps or every so many, and are left out."""
    from mmengine.hooks import EMAHook, Hook

    from mmsora.engine.hooks import LossGuardHook
    from mmsora.engine.strategies import CompileDenoiserHook
    from mmsora.registry import HOOKS
    from mmsora.utils.training_inputs import hook_class
    hooks = []
    named = [*((f'default_hooks.{name}', hook)
               for name, hook in (cfg.get('default_hooks') or {}).items()),
             *((f'custom_hooks[{i}]', hook) for i, hook in enumerate(cfg.custom_hooks))]
    for where, hook_cfg in named:
        if not hook_cfg or not issubclass(hook_class(hook_cfg, where),
                                          (LossGuardHook, EMAHook, CompileDenoiserHook)):
            continue
        if isinstance(hook_cfg, Hook):  # given built
            hooks.append(hook_cfg)
        else:
            hook_cfg = dict(hook_cfg)
            hook_cfg.pop('priority', None)  # the Runner's, when it registers the hook
            hooks.append(HOOKS.build(hook_cfg))
    return hooks


def dit_arch(cfg: dict) -> dict:
    """The DiT constructor arguments with their defaults filled in."""
    import inspect

    from mmsora.models import DiT
    params = inspect.signature(DiT).parameters
    arch = {k: p.default for k, p in params.items()}
    arch.update({k: v for k, v in cfg.items() if k != 'type'})
    return arch


class DiffusersDiT(nn.Module):
    """diffusers' ``DiTTransformer2DModel`` built from one of our DiT configs and called
    as our denoisers are (``forward(x, t, y)``), for ``--baseline diffusers``.

    Differences that are not speed: diffusers gives every block its own timestep /
    label embedder (39.8 M parameters at S/2 against the original's 33.0 M), each
    dropping labels (p = 0.1) on its own where the original drops them once per
    sample, and it ignores ``grad_checkpointing``."""

    condition = 'class'

    def __init__(self, **dit_cfg):
        super().__init__()
        from diffusers import DiTTransformer2DModel
        a = dit_arch(dit_cfg)
        self.model = DiTTransformer2DModel(
            num_attention_heads=a['num_heads'],
            attention_head_dim=a['hidden_size'] // a['num_heads'],
            in_channels=a['in_channels'],
            out_channels=a['in_channels'] * (2 if a['learn_sigma'] else 1),
            num_layers=a['depth'], sample_size=a['input_size'],
            patch_size=a['patch_size'], num_embeds_ada_norm=a['num_classes'])
        self.num_patches = (a['input_size'] // a['patch_size']) ** 2

    def forward(self, x, t, y):
        return self.model(x, timestep=t, class_labels=y).sample


def check_baseline(cfg, baseline) -> None:
    """``--baseline diffusers`` builds diffusers' DiT at the size of the config's
    denoiser: that denoiser must be a DiT. Checked before any model is timed."""
    from mmsora.utils.cli import UserError
    from mmsora.utils.training_inputs import training_model_cfg
    if baseline != 'diffusers':
        return
    denoiser = training_model_cfg(cfg).get('denoiser') or {}
    kind = denoiser.get('type') if hasattr(denoiser, 'get') else type(denoiser)
    name = getattr(kind, '__name__', kind)  # a config may give the class
    if name != 'DiT':
        raise UserError(f'--baseline diffusers times diffusers\' DiT at the size of a DiT '
                        f'denoiser; this config\'s model.denoiser is a {name}: drop '
                        '--baseline, or give a DiT config')


def build_model(cfg, impl: str):
    """The config's training model (no VAE / text encoder); for ``'diffusers'`` with
    diffusers' DiT as its denoiser."""
    import mmsora.diffusion  # noqa: F401  (fill the registries)
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    from mmsora.utils.training_inputs import training_model_cfg
    model_cfg = training_model_cfg(cfg)
    if impl == 'diffusers':
        check_baseline(cfg, impl)
        denoiser = dict(model_cfg['denoiser'])
        denoiser.pop('grad_checkpointing', None)
        MODELS.register_module('DiffusersDiT', module=DiffusersDiT, force=True)
        model_cfg['denoiser'] = dict(denoiser, type='DiffusersDiT')
    return MODELS.build(model_cfg)


def tokens_per_sample(model):
    """Patch tokens of one sample (frames x patches per frame), for transformers."""
    denoiser = model.denoiser
    embedder = getattr(denoiser, 'x_embedder', None)
    patches = getattr(embedder, 'num_patches', None) or getattr(denoiser, 'num_patches',
                                                                 None)
    if patches is None:
        return None
    shape = model.latent_shape
    return patches * (shape[1] if len(shape) == 4 else 1)


class _StepRunner:
    """What the step hooks read of a Runner: the model, its optimizer wrapper, the
    iteration, the message hub and a logger."""

    def __init__(self, model, optim_wrapper, max_iters: int):
        from mmengine.logging import MessageHub, MMLogger
        self.model, self.optim_wrapper = model, optim_wrapper
        self.iter, self.epoch, self.max_iters = 0, 0, max_iters
        self.message_hub = MessageHub.get_current_instance()
        self.logger = MMLogger.get_current_instance()


def make_step(args, impl: str):
    """Build ``impl`` ('ours' / 'diffusers') and return ``(model, step, info)``:
    ``step()`` runs one training step and returns its loss; ``info`` holds the
    forward FLOPs and tokens of one sample and the attention kernel."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    from mmsora.utils.training_inputs import forward_flops_per_sample, training_batch
    init_default_scope('mmsora')
    device = torch.device(args.device)
    cfg = benchmark_config(args)
    model = build_model(cfg, impl).to(device).train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    with torch.random.fork_rng(devices=[]):  # the same batch for every model
        torch.manual_seed(args.seed)
        batch = training_batch(model, args.batch_size, args.text_len)
    if device.type == 'cuda':  # the configs' loaders pin their batches
        batch = {k: v.pin_memory() for k, v in batch.items()}

    # One sample's forward FLOPs, before torch.compile (counted on the eager module).
    flops = forward_flops_per_sample(model, device, args.text_len)

    from mmsora.engine.strategies import accumulation_of
    micro_batches = accumulation_of(cfg)
    hooks = step_hooks(cfg)
    runner = _StepRunner(model, optim_wrapper, (args.warmup + args.steps) * micro_batches)
    for hook in hooks:
        hook.before_run(runner)
    for hook in hooks:
        hook.before_train(runner)

    def step():
        # With gradient accumulation a step is the config's micro-batches, each a
        # Runner iteration, and the optimizer step that ends the last.
        losses = []
        for _ in range(micro_batches):
            log_vars = model.train_step(batch, optim_wrapper)
            # After an iteration the Runner's RuntimeInfoHook (the first hook) logs
            # every value with .item(); then the EMA hook updates its average.
            logged = {key: value.item() for key, value in log_vars.items()}
            for hook in hooks:
                hook.after_train_iter(runner, runner.iter, batch, log_vars)
            runner.iter += 1
            losses.append(logged['loss'])
        return sum(losses) / len(losses)

    step.ema = next((h.ema_model for h in hooks if hasattr(h, 'ema_model')), None)
    info = dict(fwd_flops_per_sample=flops, tokens_per_sample=tokens_per_sample(model),
                attn_kernel=_attention_kernel(args, model, impl),
                micro_batches=micro_batches)
    return model, step, info


def _attention_kernel(args, model, impl):
    """The attention kernel our denoiser's layers resolve to (None for diffusers')."""
    layers = [m for m in model.denoiser.modules() if hasattr(m, 'attn_backend')]
    if impl != 'ours' or not layers:
        return None
    from mmsora.models.layers.attention_backends import resolve_backend
    dtype = getattr(torch, _PRECISIONS[args.precision] or 'float32')
    layer = layers[0]
    head_dim = getattr(layer, 'head_dim', None)
    if head_dim is None:
        return layer.attn_backend
    return resolve_backend(layer.attn_backend, args.device, dtype, head_dim,
                           masked=False, dropout_p=0.0)


# --------------------------------------------------------------------------- #
#                                 One worker                                   #
# --------------------------------------------------------------------------- #

def _usage():
    """(minor page faults so far, CPU seconds of all this process's threads so far)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def check_args(args) -> None:
    from mmsora.utils.cli import UserError, check_at_least, check_output_path
    if args.memory_budget is not None and args.device != 'cuda':
        raise UserError('--memory-budget caps CUDA memory: add --device cuda')
    for option in ('memory_budget', 'profile'):
        if getattr(args, option) is not None and args.interleave:
            raise UserError(f'--{option.replace("_", "-")} looks at one model in its '
                            'own process: drop --interleave')
    if args.profile is not None:
        if os.path.exists(args.profile) and not os.path.isdir(args.profile):
            raise UserError(f'--profile {args.profile}: exists and is not a directory')
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda: no CUDA device on this machine')
    check_at_least(args, dict(steps=1, warmup=0, batch_size=1, repeats=1, threads=1,
                              text_len=1,
                              **({} if args.config else dict(input_size=1, num_classes=1))))
    for name in ('peak_tflops', 'memory_budget'):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f'--{name.replace("_", "-")} must be > 0, got {value}')
    check_output_path(args.json, '--json')
    if args.precision == 'fp16' and args.device == 'cpu':
        raise UserError(f'--precision {FP16_ON_CPU}')
    if args.interleave and not args.baseline:
        raise UserError('--interleave alternates two models\' steps: add --baseline diffusers')
    if args.ema is not None and not 0 < args.ema < 1:
        raise UserError(f'--ema is a momentum in (0, 1) (DiT: 1e-4), got {args.ema}')
    if not args.config:
        from mmsora.models import DIT_PRESETS
        if args.model not in DIT_PRESETS:
            raise UserError(f'--model {args.model!r}: choose from {", ".join(DIT_PRESETS)}')


def _setup(args) -> None:
    """Threads, seed, TF32 and the CPU's malloc as tools/train.py sets them, and the
    memory budget: the same for every model timed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from mmsora.utils.cli import keep_freed_memory_on_cpu
    keep_freed_memory_on_cpu(args, args.device == 'cpu')
    if args.device == 'cuda':
        from mmsora.engine.strategies import set_tf32, tf32_supported
        set_tf32(tf32_supported() and not args.no_tf32)
    if args.memory_budget is not None:
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if args.memory_budget * 2**30 > total:
            from mmsora.utils.cli import UserError
            raise UserError(f'--memory-budget {args.memory_budget} GiB is above this '
                            f'card\'s {total / 2**30:.1f} GiB')
        torch.cuda.set_per_process_memory_fraction(args.memory_budget * 2**30 / total)


def throughput(args, info: dict, step_s: float) -> dict:
    """samples/s, tokens/s, model TFLOP/s and MFU of a step of ``step_s`` seconds."""
    from mmsora.utils.flops import peak_tflops
    n = args.batch_size * info.get('micro_batches', 1)  # samples per optimizer step
    flops_per_step = 3 * info['fwd_flops_per_sample'] * n  # fwd + 2x fwd for backward
    out = dict(samples_per_s=n / step_s,
               fwd_gflops_per_sample=info['fwd_flops_per_sample'] / 1e9,
               tflops_per_s=flops_per_step / step_s / 1e12)
    if info['tokens_per_sample']:
        out['tokens_per_s'] = info['tokens_per_sample'] * n / step_s
    peak = args.peak_tflops
    if peak is None and args.device == 'cuda':
        peak = peak_tflops(torch.cuda.get_device_name(), args.precision,
                           tf32=torch.backends.cuda.matmul.allow_tf32)
    if peak:
        out.update(peak_tflops=peak, mfu=out['tflops_per_s'] / peak)
    return out


def run_worker(args) -> dict:
    """Build one implementation and time its training steps."""
    from mmsora.utils.process_memory import peak_memory, rss_mb
    _setup(args)
    device = torch.device(args.device)
    rss_before_model = rss_mb()
    try:
        model, step, info = make_step(args, args.worker)
        for _ in range(args.warmup):
            step()
        _sync(device)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        faults, cpu = _usage()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        _sync(device)
        elapsed = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError as e:
        if args.memory_budget is None:
            raise
        from mmsora.utils.cli import UserError
        raise UserError(f'{args.worker} does not fit in --memory-budget '
                        f'{args.memory_budget} GiB at batch {args.batch_size}: '
                        f'{str(e).splitlines()[0]}') from e
    end_faults, end_cpu = _usage()
    faults, cpu_s = end_faults - faults, end_cpu - cpu

    step_s = elapsed / args.steps
    result = dict(
        impl=args.worker,
        params_m=sum(p.numel() for p in model.denoiser.parameters()) / 1e6,
        step_ms=step_s * 1e3,
        loss=loss,
        cpu_ms=cpu_s / args.steps * 1e3,  # all threads of this process
        page_faults=faults / args.steps,  # minor: first touches of fresh memory
        **throughput(args, info, step_s))
    if info['attn_kernel']:
        result['attn_kernel'] = info['attn_kernel']
    # peak_mem_mb (in MiB, under its old name: tools/gpu_benchmarks.py and the
    # recorded JSON read it) is one of two figures; peak_mem_kind says which. On the
    # CPU it is this program's VmHWM, not ru_maxrss, which counts the parent's memory
    # before exec; it includes the interpreter and torch itself, so the RSS measured
    # before the model was built is reported too.
    result.update(peak_memory(device))
    if device.type != 'cuda':
        result['rss_before_model_mb'] = rss_before_model
    if args.profile:  # after the figures above: the profiler's overhead is not in them
        from mmsora.utils.step_profile import profile_steps
        os.makedirs(args.profile, exist_ok=True)
        result['profile'] = os.path.join(args.profile, f'{args.worker}.txt')
        with open(result['profile'], 'w') as f:
            f.write(profile_steps(step, device) + '\n')
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
    _setup(args)
    impls = ['ours', args.baseline]
    steps = {}
    for impl in impls:
        torch.manual_seed(args.seed)  # both models built from the same seed
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
    import tempfile

    from mmsora.utils.cli import UserError
    cmd = [sys.executable, os.path.abspath(__file__), *argv, '--worker', impl]
    with tempfile.TemporaryFile('w+') as out, subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.PIPE, text=True) as proc:
        errors = []  # run_cli's one line for a mistake: held back, passed on as ours
        for line in proc.stderr:  # the rest as it comes
            if line.startswith('error: '):
                errors.append(line)
            else:
                sys.stderr.write(line)
        proc.wait()
        out.seek(0)
        stdout = out.read()
    if proc.returncode == 2 and errors:
        sys.stderr.writelines(errors[:-1])
        raise UserError(errors[-1][len('error: '):].rstrip('\n'))
    sys.stderr.writelines(errors)
    if proc.returncode != 0:
        raise SystemExit(f'benchmark worker for {impl} failed (exit {proc.returncode})')
    for line in stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    raise SystemExit(f'benchmark worker for {impl} printed no result:\n{stdout}')


def format_table(results: list) -> str:
    from mmsora.utils.process_memory import peak_mem_header
    cols = [('impl', '{}'), ('params_m', '{:.2f}'), ('step_ms', '{:.1f}'),
            ('samples_per_s', '{:.2f}'), ('tokens_per_s', '{:.0f}'),
            ('tflops_per_s', '{:.4g}'), ('mfu', '{:.3g}'), ('peak_mem_mb', '{:.0f}'),
            ('cpu_ms', '{:.0f}'), ('page_faults', '{:.0f}')]
    peak_header = peak_mem_header(r.get('peak_mem_kind') for r in results)
    rows = [[peak_header if name == 'peak_mem_mb' else name for name, _ in cols]]
    for r in results:
        rows.append([fmt.format(r[k]) if k in r else '-' for k, fmt in cols])
    if len(results) == 2:
        ours, base = results
        rows.append(['ratio ours/diffusers'] + [
            f'{ours[k] / base[k]:.3f}' if k in ours and k in base and base[k] else '-'
            for k, _ in cols[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    return '\n'.join('  '.join(v.rjust(w) for v, w in zip(row, widths)) for row in rows)


def baseline_notes(args, cfg) -> list:
    """Lines under the results where the ratio to the baseline is not like for like:
    diffusers' DiT runs without our denoiser's gradient checkpointing."""
    from mmsora.utils.training_inputs import training_model_cfg
    if not args.baseline:
        return []
    k = (training_model_cfg(cfg).get('denoiser') or {}).get('grad_checkpointing')
    if not k:
        return []
    return [f'note: {args.baseline} runs without gradient checkpointing (ours: '
            f'grad_checkpointing={k}), so the ratio is not like for like; drop '
            '--grad-checkpointing (or set it to 0) to compare the same step']


def git_commit(path=None):
    """The commit checked out where ``path`` (default: this file) lies, or None
    outside a git checkout (or without git)."""
    folder = os.path.dirname(os.path.abspath(path or __file__))
    try:
        out = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=folder, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform knows)."""
    import platform
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(args) -> dict:
    """What docs/benchmarks.md asks every figure to carry: when (UTC), where, by which
    command and at which commit."""
    import datetime
    import socket
    gpu = torch.cuda.get_device_name() if args.device == 'cuda' else None
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec='seconds'),
                machine=dict(cpu=cpu_model(), cpus=os.cpu_count(), gpu=gpu),
                hostname=socket.gethostname(),
                command=shlex.join(sys.argv), git_commit=git_commit())


def setup_record(args, micro, checkpointing, peak_tflops=None) -> dict:
    """What a run measured, for its header line and its JSON: the options that shape
    the step (``micro``: micro-batches per optimizer step, 1 without accumulation;
    ``checkpointing``: our denoiser's grad_checkpointing as the config builds it, K,
    0: none, or 'selective'), the mode (interleaved, or separate processes with their
    repeats) and the machine; None where it does not apply."""
    cuda = args.device == 'cuda'
    if cuda:
        from mmsora.engine.strategies import tf32_supported
    return dict(config=args.config, model=None if args.config else args.model,
                input_size=None if args.config else args.input_size,
                cfg_options=args.cfg_options or None, batch_size=args.batch_size,
                micro_batches=micro,
                grad_checkpointing=checkpointing, attn_backend=args.attn_backend,
                ema=args.ema, no_ema=args.no_ema or None, compile=args.compile or None,
                device=args.device, precision=args.precision,
                tf32=(tf32_supported() and not args.no_tf32) if cuda else None,
                gpu=torch.cuda.get_device_name() if cuda else None,
                peak_tflops=peak_tflops, memory_budget_gib=args.memory_budget,
                default_malloc=args.default_malloc or None, steps=args.steps,
                warmup=args.warmup, interleaved=args.interleave or None,
                repeats=None if args.interleave else args.repeats,
                threads=args.threads or torch.get_num_threads(), torch=torch.__version__)


def report(args, setup: dict, text: str, record: dict) -> None:
    """Print the setup line and the results; with ``--json`` write both."""
    print(' '.join(f'{k}={v}' for k, v in setup.items()  # (one micro-batch: not said)
                   if v is not None and not (k == 'micro_batches' and v == 1)))
    print(text)
    if args.json:  # checked before the work (check_args); its folder made if missing
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(dict(setup=setup, **provenance(args), **record), f, indent=2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    check_args(args)
    if args.worker:
        print(_RESULT_TAG + json.dumps(run_worker(args)), flush=True)
        return
    batch_from_config = args.config and args.batch_size is None
    cfg = benchmark_config(args)
    step_hooks(cfg)  # a wrong path, option or hook stops here
    check_baseline(cfg, args.baseline)  # before ours is timed
    if batch_from_config:
        print(batch_note(args, cfg), flush=True)
    from mmsora.engine.strategies import accumulation_of
    from mmsora.utils.memory_estimate import configured_grad_checkpointing
    micro = accumulation_of(cfg)  # a step: this many micro-batches of --batch-size
    # (the config's setting, else the denoiser's default: as estimate_memory.py names it)
    checkpointing = configured_grad_checkpointing(cfg)
    checkpointing = int(checkpointing) if isinstance(checkpointing, bool) else checkpointing
    notes = baseline_notes(args, cfg)
    if args.interleave:
        record = interleave(args)
        report(args, setup_record(args, micro, checkpointing),
               '\n'.join([interleave_report(args, record), *notes]), record)
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
    lines = [format_table(results)]
    lines += [f"{r['impl']}: attention kernel {r['attn_kernel']}"
              for r in results if 'attn_kernel' in r]
    if args.repeats > 1:
        lines += [f"{r['impl']}: step_ms of each run {r['step_ms_all']}" for r in results]
    lines += notes
    setup = setup_record(args, micro, checkpointing, peak_tflops=results[0].get('peak_tflops'))
    report(args, setup, '\n'.join(lines), dict(results=results))


if __name__ == '__main__':
    from mmsora.utils.cli import run_cli
    sys.exit(run_cli(main))
