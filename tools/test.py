"""Evaluate a trained model by sampling: ``python tools/test.py CONFIG [CKPT] [options]``.

Draws ``evaluation.num_samples`` samples (sample i with seed SEED + i, in fixed global
batches, so the result is the same on 1 or N processes) and computes the metrics of the
config's ``evaluation`` section (FID / IS / FVD / CLIP score; docs/evaluation.md).

Examples:
    # FID-50K of a run's newest EMA checkpoint
    python tools/test.py work_dirs/dit_xl2_8xb32_400k_imagenet256 \
        --evaluation configs/_base_/evaluation/fid50k_imagenet256.py
    # 8 GPUs; keep the samples in the ADM evaluator's .npz
    torchrun --nproc_per_node 8 tools/test.py CONFIG CKPT --launcher pytorch \
        --out samples.npz
"""
import argparse
import json
import os
import os.path as osp
import sys

from mmsora.utils.cli import (EACH_VALUE, THEIR_VALUES, ArgumentParser, Interrupted, UserError,
                              add_malloc_option, check_at_least, check_output_path,
                              check_samples_not_finished, check_torchrun_launcher, device_setting,
                              keep_freed_memory_on_cpu, run_cli)

SECTIONS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs', '_base_',
                    'evaluation')


# tools/infer.py's sampling flags (and DiT's / SiT's sample_ddp.py's: --cfg-scale,
# --num-sampling-steps, --sampling-method, SiT's SDE / ODE options), which this tool
# takes from the evaluation section: what an unrecognised one is told to give instead
# (argparse's near match sent --num-sampling-steps 250 to --num-samples, and --sampler
# to --sample-dir; --cfg-scale and --ckpt had no hint).
_SAMPLE_CFG = '--cfg-options evaluation.sample_cfg.'
STAND_INS = {
    # (SiT's --sampling-method Euler is not a sampler name here: sde_euler, or ode_euler
    # by its mode word: FOREIGN_VALUES)
    '--sampler': (_SAMPLE_CFG + 'sampler={}', 'NAME', THEIR_VALUES),
    '--steps': (_SAMPLE_CFG + 'num_steps={}', 'N'),
    '--cfg-scale': (_SAMPLE_CFG + 'cfg_scale={}', 'S'),
    '--eta': (_SAMPLE_CFG + 'eta={}', 'E'),
    '--precision': (_SAMPLE_CFG + 'precision={}', 'P'),
    '--sampler-options': (_SAMPLE_CFG + '{}', 'KEY=VALUE (one entry per option)', EACH_VALUE),
    **{f'--{key.replace("_", "-")}': (f'{_SAMPLE_CFG}{key}={{}}', 'VALUE')
       for key in ('atol', 'rtol', 'diffusion_form', 'diffusion_norm', 'last_step',
                   'last_step_size')},
    '--labels': ("--cfg-options evaluation.labels=random (or a list of class ids, "
                 'evaluation.labels=[207,360])', None),
    '--checkpoint': ('the checkpoint as the argument after the config (tools/test.py CONFIG '
                     '{})', 'CKPT'),
}


def parse_args(argv=None):
    parser = ArgumentParser(description='Evaluate an mmsora model by sampling',
                            stand_ins=STAND_INS)
    parser.add_argument('run', help='config file, or a work dir made by tools/train.py')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: the newest in '
                        'the work dir); mmengine files, DeepSpeed checkpoint folders, '
                        'original DiT and fast-DiT files')
    parser.add_argument('--evaluation', help='take the evaluation section from this config '
                        'file instead, e.g. configs/_base_/evaluation/fid50k_imagenet256.py')
    parser.add_argument('--num-samples', type=int, help='samples in all (default: the '
                        "config's evaluation.num_samples)")
    parser.add_argument('--batch-size', type=int, help='samples per batch; each batch is '
                        'drawn whole by one process, so this is per-process memory, not '
                        "split among the processes (default: the config's "
                        'evaluation.batch_size)')
    parser.add_argument('--seed', type=int, help='sample i uses seed SEED + i')
    parser.add_argument('--out', help='also save the samples as an ADM-style .npz; a '
                        'rerun after a crash keeps its finished batches (after a crash in '
                        'the scoring, it scores the .npz without sampling again)')
    parser.add_argument('--sample-dir', help='also save one PNG / mp4 per sample here')
    parser.add_argument('--prompt-file', help='text-conditioned models: the prompts to '
                        'sample and score, one a line (blank lines and lines starting with '
                        '# skipped), cycled over the samples; sets evaluation.prompts')
    parser.add_argument('--json', help='write the metrics to this JSON file')
    parser.add_argument('--no-ema', action='store_true', help='use the raw, not EMA, weights')
    parser.add_argument('--device', type=device_setting,
                        help='default: cuda (this rank\'s GPU) when there is one, else '
                        'cpu; cpu: the metrics\' feature networks too (those naming no '
                        'device), and under --launcher the processes join over gloo, '
                        'taking no GPU; cuda:N: that GPU, for one process on every '
                        'machine (several take each its own: CUDA_VISIBLE_DEVICES chooses '
                        'them)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    add_malloc_option(parser)
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries, e.g. evaluation.sample_cfg.num_steps=50')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def check_args(args):
    check_at_least(args, ('num_samples', 'batch_size'))
    from mmsora.utils.foreign_flags import FOREIGN_WORDS
    if args.checkpoint in FOREIGN_WORDS and not osp.exists(args.checkpoint):
        # (SiT's ``sample_ddp.py SDE --ckpt X``: the mode word was taken for the
        # checkpoint, 'checkpoint file not found: SDE')
        sampler = FOREIGN_WORDS[args.checkpoint][1].split(' ', 1)[1]
        raise UserError(f"{args.checkpoint} is SiT's sampling mode, not a checkpoint: give "
                        'the checkpoint after the config (tools/test.py CONFIG CKPT) and the '
                        f'sampler with --cfg-options evaluation.sample_cfg.sampler={sampler}')
    if args.out is not None and not args.out.endswith('.npz'):
        raise UserError(f'--out is an .npz file (the ADM evaluator\'s layout), got {args.out!r}')
    for option, path, folder in (('--out', args.out, False), ('--json', args.json, False),
                                 ('--sample-dir', args.sample_dir, True)):
        check_output_path(path, option, folder)  # before the sampling, not after it
    if args.out is not None and osp.isfile(args.out):
        from mmsora.apis.mass_sampling import unscored_samples
        if not unscored_samples(args.out):  # (those are scored if they are this run's)
            check_samples_not_finished(args.out)


def shipped_sections() -> str:
    """The evaluation sections configs/_base_/evaluation/ holds, as the messages name
    them."""
    names = sorted(n for n in os.listdir(SECTIONS) if n.endswith('.py')) \
        if osp.isdir(SECTIONS) else []
    return ', '.join(f'configs/_base_/evaluation/{n}' for n in names)


def evaluation_section(args, cfg, later, prompts) -> dict:
    """The evaluation settings: the config's ``evaluation`` section (or --evaluation's,
    with the ``evaluation.*`` options ``later`` over it) under --num-samples,
    --batch-size, --seed and --prompt-file. A missing section, one without metrics
    (``--cfg-options evaluation.num_samples=4`` on a config without a section makes
    one) and keys it does not take are one line, not evaluate_model's TypeError."""
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    if args.evaluation:
        cfg.evaluation = load_config(args.evaluation).get('evaluation')
        if not cfg.evaluation:
            raise UserError(f'{args.evaluation} has no `evaluation` section; give one of '
                            f'{shipped_sections()}')
        apply_cfg_options(cfg, later)
    evaluation = cfg.get('evaluation')
    take = (f'give one with --evaluation FILE ({shipped_sections()}) or inherit one, see '
            'docs/evaluation.md')
    if not evaluation:
        raise UserError('the config has no `evaluation` section (metrics and number of '
                        f'samples): {take}')
    evaluation = dict(evaluation)
    for key in ('num_samples', 'batch_size', 'seed'):
        if getattr(args, key) is not None:
            evaluation[key] = getattr(args, key)
    if prompts is not None:
        evaluation['prompts'] = prompts
    import difflib
    import inspect

    from mmsora.apis import evaluate_model
    takes = [k for k in inspect.signature(evaluate_model).parameters
             if k not in ('model', 'out', 'sample_dir', 'default_sample_cfg')]
    for key in evaluation:
        if key not in takes:
            close = difflib.get_close_matches(key, takes, n=1)
            raise UserError(f'evaluation.{key}: not a setting of the evaluation section'
                            + (f'; did you mean {close[0]}?' if close else
                               f' (it takes {", ".join(takes)})'))
    metrics = evaluation.get('metrics')
    if isinstance(metrics, dict) and 'type' in metrics:
        metrics = [metrics]
    where = args.evaluation or 'the config'
    if not metrics:
        raise UserError(f'evaluation.metrics: none in the evaluation section of {where} '
                        f'(what to score): {take}')
    if not isinstance(metrics, (list, tuple)) or not all(
            isinstance(m, dict) and 'type' in m for m in metrics):
        # (evaluation.metrics.0.reference=X on a config without a section: a dict)
        raise UserError(f'evaluation.metrics: a list of metric configs, each with a type '
                        f"(dict(type='FID', ...)), got {metrics!r} in {where}: {take}")
    return evaluation


def metrics_on_cpu(evaluation) -> dict:
    """The evaluation section with the feature networks of its metrics on the CPU where a
    metric names no ``device`` (SampleMetric's default, CUDA wherever torch sees it, put
    every --device cpu process's network on GPU 0)."""
    import mmsora.evaluation  # noqa: F401  (registers the metrics)
    from mmsora.evaluation.metrics.base import SampleMetric
    from mmsora.registry import METRICS
    metrics = evaluation['metrics']

    def cpu_metric(metric):
        kind = metric['type']
        cls = METRICS.get(kind) if isinstance(kind, str) else kind
        if (isinstance(cls, type) and issubclass(cls, SampleMetric)
                and metric.get('device') is None):
            return dict(metric, device='cpu')
        return metric
    return dict(evaluation, metrics=[cpu_metric(m) for m in (
        [metrics] if isinstance(metrics, dict) else metrics)])


# The config keys evaluation_sample_cfg merges, base first (merge_sample_cfg's names)
SAMPLE_CFG_KEYS = ('sample_cfg', 'evaluation.sample_cfg')


def evaluation_sample_cfg(cfg, evaluation) -> dict:
    """The settings the evaluation samples with: its ``sample_cfg`` over the config's
    (``merge_sample_cfg``), one that is not a dict refused naming its key (the
    evaluation's was named as Python's sampling settings over the config's)."""
    from mmsora.diffusion.scheduler_sampling import merge_sample_cfg
    try:
        return merge_sample_cfg(cfg.get('sample_cfg'), evaluation.get('sample_cfg'),
                                names=SAMPLE_CFG_KEYS)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_before_loading(cfg, evaluation) -> None:
    """The evaluation's sampler settings against the config's objective and denoiser
    (guidance needs its ``forward_with_cfg``: the check tools/train.py makes of the
    evaluation section), its prompts against the kind of model, and a VAE to decode
    latents, from the config alone: they were found once the weights had loaded and
    the first batch started (the FID section's DDPM for a SiT model, a text model
    without prompts). A bad setting is named by the section it came from."""
    from mmsora.utils.config_keys import (check_guidance, check_sample_settings_of,
                                          model_setting, text_conditioned_config)
    settings = evaluation_sample_cfg(cfg, evaluation)
    try:
        check_sample_settings_of(cfg.model, settings)
    except ValueError as e:
        where, key = refused_settings_source(cfg, e)
        raise UserError(f'{where}: {e}; set them with --cfg-options {key}.KEY=VALUE') from None
    # (the section as this run samples it: --evaluation's, under the options)
    check_guidance(dict(model=cfg.model, sample_cfg=cfg.get('sample_cfg'),
                         evaluation=evaluation))
    if text_conditioned_config(cfg.model):
        if not evaluation.get('prompts'):
            raise UserError('this model is text-conditioned: give the prompts to sample and '
                            'score with --prompt-file FILE (one a line) or evaluation.prompts')
        if not cfg.model.get('text_encoder'):
            raise UserError('this text-conditioned model has no text encoder to read the '
                            'prompts: set model.text_encoder.pretrained_path=DIR with '
                            '--cfg-options')
    try:  # (latents without a VAE were sampled, then refused at the first batch's scoring)
        vae, shape = model_setting(cfg.model, 'vae'), model_setting(cfg.model, 'latent_shape')
    except KeyError:  # (a model of one's own without them)
        return
    from mmsora.apis.inference import check_makes_pictures
    check_makes_pictures(vae, shape)


def refused_settings_source(cfg, error) -> tuple:
    """``(words, key)``: where the sampler setting that ``error`` refuses came from:
    the config's ``sample_cfg`` where it alone is refused so (the evaluation's leaves
    that setting to it), else the evaluation's ``sample_cfg`` over it (both were named
    as the evaluation's)."""
    from mmsora.utils.config_keys import check_sample_settings_of
    try:
        check_sample_settings_of(cfg.model, evaluation_sample_cfg(cfg, {}))
    except ValueError as e:
        if str(e) == str(error):
            return ("the config's sampler settings (sample_cfg, which the evaluation "
                    'samples with)'), SAMPLE_CFG_KEYS[0]
    return ("the evaluation's sampler settings (evaluation.sample_cfg over the config's "
            'sample_cfg)'), SAMPLE_CFG_KEYS[1]


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    check_torchrun_launcher(args.launcher)  # before minutes of loading weights
    from mmsora.utils.dist import on_cpu, start_on_device
    start_on_device(args.device, args.launcher)  # (gloo for --device cpu, else a GPU each)
    prompts = None
    if args.prompt_file:  # before minutes of loading weights
        from mmsora.apis.inference import read_prompt_file
        prompts = read_prompt_file(args.prompt_file)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    # With --evaluation, the evaluation.* options apply to the section it brings.
    later = [o for o in args.cfg_options if args.evaluation and o.startswith('evaluation.')]
    early = [o for o in args.cfg_options if o not in later]
    from mmsora.apis.run_checks import check_run_objective, load_run_config
    # from the config alone, before minutes of loading weights (None: it does not load,
    # init_model says why)
    loaded = load_run_config(args.run, early, schedule_note=False)
    if loaded is not None:
        cfg, saved = loaded
        # (a config without an evaluation section is refused here)
        check_before_loading(cfg, evaluation_section(args, cfg, later, prompts))
        # The checkpoint scored (the one after the config, else the work dir's newest)
        # against the config's objective and denoiser, as tools/infer.py checks it: a
        # run of another objective or denoiser was scored, its outputs misread.
        check_run_objective(cfg.model, args.run, args.checkpoint, saved,
                            f'the checkpoint {args.checkpoint}')
    from mmengine.dist import is_main_process

    from mmsora.apis import evaluate_model, init_model, init_sampling_processes
    device = init_sampling_processes(args.launcher, args.device)
    keep_freed_memory_on_cpu(args, on_cpu(device))
    model, cfg = init_model(args.run, args.checkpoint, device=device, cfg_options=early,
                            use_ema=not args.no_ema, trained_option='--no-ema',
                            checkpoint_option='the checkpoint after the config (test.py '
                            'CONFIG CKPT)')
    if is_main_process():  # which file of a work dir (or of a copy of one) is scored
        print(f'weights: {model.loaded_from} ({model.loaded_weights})', flush=True)
    evaluation = evaluation_section(args, cfg, later, prompts)
    if on_cpu(args.device):  # (their default is CUDA wherever torch sees it)
        evaluation = metrics_on_cpu(evaluation)
    # the precision infer samples in by default (TF32 on a GPU, as DiT's sample_ddp.py)
    from mmsora.apis.inference import default_precision
    from mmsora.apis.mass_sampling import sampling_line
    from mmsora.diffusion.scheduler_sampling import NOT_SAMPLE_ARGS
    sample_cfg = evaluation_sample_cfg(cfg, evaluation)
    precision = default_precision(device, sample_cfg)
    if precision is not None:
        sample_cfg['precision'] = precision
    if is_main_process():  # what the metrics are scored at (the guidance decides an FID)
        from mmsora.utils.trained_settings import keyword_defaults
        n = evaluation.get('num_samples', keyword_defaults(evaluate_model)['num_samples'])
        print(sampling_line(n, {k: v for k, v in sample_cfg.items()
                                if k not in NOT_SAMPLE_ARGS},
                            evaluation.get('labels') == 'random'), flush=True)
    try:
        metrics = evaluate_model(model, **evaluation, out=args.out,
                                 sample_dir=args.sample_dir, default_sample_cfg=sample_cfg)
    except KeyboardInterrupt as e:
        if isinstance(e, Interrupted) or args.out:
            raise
        raise Interrupted('(the samples were held in memory only: a rerun samples them all '
                          'again; give --out NAME.npz to keep them)',
                          quiet=not is_main_process()) from None
    if is_main_process():
        for key, value in metrics.items():
            print(f'{key}: {value:.4f}')
        if args.json:  # what was scored (the weights as loaded: use_ema said true for
            # trained weights), as well as the values
            from mmsora.apis.evaluation import evaluation_record
            with open(args.json, 'w') as f:
                json.dump(evaluation_record(model, metrics, evaluation, sample_cfg,
                                            run=args.run), f, indent=2, default=str)
    from mmsora.utils.dist import close_process_group
    close_process_group()


if __name__ == '__main__':
    sys.exit(run_cli(main))
