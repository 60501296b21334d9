"""Sample from a trained model: ``python tools/infer.py CONFIG_OR_WORK_DIR [options]``.

Image models (``model.latent_shape`` (C, H, W)) write one PNG grid to ``--out``. Video
models (``model.latent_shape`` (C, T, H, W)) write one H.264 mp4 per sample:
``--out NAME.mp4`` gives ``NAME_000_label3.mp4, NAME_001_label5.mp4, ...``, and a
folder (``--out clips/``) gives ``clips/sample_000_label3.mp4, ...``
(``sample_000_label3_Biking.mp4`` where the run's latent store records its class names,
which ``--labels`` then takes too); ``--gif`` adds a GIF beside each mp4, and ``--fps``
defaults to the config's ``sample_cfg.fps`` (else 8).
Clips of an odd width or height are padded by one row / column of edge pixels in the
mp4s (H.264 needs an even size). Options of the other kind (``--nrow`` / ``--upscale``
for video, ``--fps`` / ``--gif`` for image models) are refused.
The config's ``sample_cfg`` gives the sampling settings (sampler, steps, guidance, the
sampler's options such as DDIM's ``eta``, ``guidance_channels``); the options here
override it.

Examples:
    # the newest checkpoint of a run, EMA weights, 8 samples of classes 0..3
    python tools/infer.py work_dirs/dit_tiny2_1xb32_1500_shapes16 --out samples.png
    # a released DiT checkpoint with a local SD VAE
    python tools/infer.py configs/dit/dit_xl2_8xb32_400k_imagenet256.py \
        --checkpoint DiT-XL-2-256x256.pt --labels 207 360 387 974 \
        --cfg-options model.vae.pretrained_path=checkpoints/sd-vae-ft-ema
    # a video run: 4 clips as mp4 + gif, 12 fps
    python tools/infer.py work_dirs/video_dit_tiny4_1xb1_overfit_bikes --num-samples 4 \
        --sampler ddim --steps 50 --out clips/ --gif --fps 12
    # a SiT / flow-matching run: SiT's SDE sampler with options, or adaptive dopri5
    python tools/infer.py work_dirs/sit_tiny2_1xb32_1500_shapes16 --sampler sde_euler \
        --steps 100 --sampler-options diffusion_form=sigma last_step=Mean
    python tools/infer.py work_dirs/sit_tiny2_1xb32_1500_shapes16 --sampler ode_dopri5 \
        --sampler-options atol=1e-6 rtol=1e-3
"""
import os.path as osp
import sys

import torch

from mmsora.utils.cli import (ArgumentParser, UserError, add_malloc_option, check_at_least,
                              check_output_path, check_samples_not_finished,
                              check_torchrun_launcher, device_setting, keep_freed_memory_on_cpu,
                              note, run_cli, torchrun_processes)


def parse_args(argv=None):
    parser = ArgumentParser(description='Sample pictures from an mmsora model')
    parser.add_argument('run', help='config file, or a work dir made by tools/train.py')
    parser.add_argument('--checkpoint', help='checkpoint (default: the newest in the work '
                        "dir; for a config file, the pretrained weights it names, such as a "
                        "Stable Cascade prior's pretrained_path); mmengine files, DeepSpeed "
                        'checkpoint folders (--deepspeed runs), original DiT and fast-DiT '
                        'files and diffusers DiT folders '
                        '(facebook/DiT-XL-2-256) are accepted')
    parser.add_argument('--labels', type=label_or_random, nargs='+',
                        help="class ids to sample (default: cycle through the classes), "
                        "class names where the run's latent store records them (meta."
                        "classes: extract_features.py of class folders; a name of digits "
                        "alone is read as an id), or 'random': each sample's class drawn "
                        "uniformly from --seed, as DiT's sample_ddp.py draws them for FID")
    parser.add_argument('--prompt', nargs='+', metavar='TEXT',
                        help='text-conditioned models: prompts to sample (cycled to '
                        '--num-samples)')
    parser.add_argument('--prompt-file', help='text-conditioned models: a file with one '
                        'prompt per line (blank lines and lines starting with # skipped)')
    parser.add_argument('--num-samples', type=int, default=None,
                        help='number of samples (default: len(--labels), or the number '
                        'of prompts, else 16)')
    parser.add_argument('--seed', type=int, default=0,
                        help='sample i uses seed SEED + i, whatever the batch size')
    parser.add_argument('--sampler', help="a sampler of the model's objective: "
                        "GaussianDiffusion: 'ddpm', 'ddim' or a diffusers scheduler name "
                        "(DPMSolverMultistepScheduler, EulerDiscreteScheduler, ...); "
                        "Transport (SiT, rectified flow): ode_euler, ode_heun, ode_dopri5, "
                        "sde_euler, sde_heun, FlowMatchEulerDiscreteScheduler; Stable "
                        "Cascade's WuerstchenDiffusion: DDPMWuerstchenScheduler; default: "
                        "the config's sample_cfg, else the objective's own")
    parser.add_argument('--steps', type=int, help='number of sampling steps')
    parser.add_argument('--sampler-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help="options of the sampler, e.g. atol=1e-6 rtol=1e-3 (ode_dopri5), "
                        "diffusion_form=sigma last_step=Mean (sde_*), shift=3.0 "
                        "(FlowMatchEulerDiscreteScheduler); unknown keys are named")
    parser.add_argument('--cfg-scale', type=float, help='classifier-free guidance scale '
                        '(1 = none)')
    parser.add_argument('--eta', type=float, help="DDIM's eta (default 0)")
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--precision', choices=['fp32', 'tf32', 'bf16', 'fp16'],
                        help="the denoiser's arithmetic: fp32; tf32 (float32 with TF32 "
                        "matrix products on Ampere and newer, as DiT's sample.py); bf16 / "
                        "fp16 (autocast: faster on a GPU, flash attention; samples differ "
                        "a little). Default: the config's sample_cfg.precision, else tf32 "
                        "on a GPU, fp32 on the CPU")
    parser.add_argument('--no-ema', action='store_true', help='use the raw, not EMA, weights')
    parser.add_argument('--device', type=device_setting,
                        default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='default: cuda when there is one (under --launcher, each '
                        "process's GPU), else cpu; cpu under --launcher: the processes "
                        'join over gloo, taking no GPU; cuda:N: that GPU, for one process '
                        'on every machine (several take each its own: '
                        'CUDA_VISIBLE_DEVICES chooses them)')
    add_malloc_option(parser)
    parser.add_argument('--out', help='images: the PNG grid (default samples.png); '
                        'videos: NAME.mp4, written as NAME_{i:03d}_label{y}.mp4 '
                        "(NAME_{i:03d}_label{y}_{class name}.mp4 where the run's latent "
                        'store names its classes; NAME_{i:03d}.mp4 for text models), '
                        'NAME.gif (GIFs alone), or '
                        'a folder (default samples.mp4); NAME.npz: all samples in the ADM '
                        'evaluator\'s layout (arr_0 uint8 NHWC / NTHWC, arr_1 labels)')
    parser.add_argument('--num-frames', type=int, help='videos: frames per clip (default: '
                        "the config's; at most what the model was trained for)")
    parser.add_argument('--resolution', help='output size HxW or S (default: the '
                        "config's; transformer denoisers only make their trained size)")
    parser.add_argument('--fps', type=float, help="videos: frame rate (default: the "
                        "config's sample_cfg.fps, else 8)")
    parser.add_argument('--gif', action='store_true',
                        help='videos: also write a GIF beside each mp4')
    parser.add_argument('--nrow', type=int, help='image models: pictures per grid row '
                        '(default 8)')
    parser.add_argument('--upscale', type=int, help='image models: enlarge the grid by '
                        'this integer factor (nearest; default 1)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries')
    # Mass sampling for evaluation (docs/evaluation.md): --out NAME.npz.
    parser.add_argument('--sample-dir', help='with --out NAME.npz: also write one PNG / '
                        'mp4 per sample into this folder (and labels.txt, or prompts.txt '
                        'for text models: line i is sample i\'s)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='with --out NAME.npz: sample over the processes of a '
                        'torchrun (pytorch) or slurm launch')
    return parser.parse_args(argv)


def label_or_random(text):
    """A class id, 'random', or a class name (made an id once the run's classes are
    read: :func:`~mmsora.apis.class_names.class_ids`). An id first: '207' stays class
    207 whatever the classes are named."""
    if text == 'random':
        return text
    try:
        return int(text)
    except ValueError:
        return text


LABELS_ON_TEXT_MODEL = ('--labels is for class-conditional models; this one takes '
                        '--prompt / --prompt-file')


def check_args(args, num_classes, video=False, text=False, settings=None):
    """Validate values a parser cannot; raise UserError naming the option. The
    guidance floor is judged on ``settings``, what sampling will use
    (:func:`sample_settings`: the flag over the config's ``sample_cfg``), else on the
    flag alone."""
    check_at_least(args, ('num_samples', 'steps', 'batch_size', 'nrow', 'upscale'))
    check_guidance_floor(args, dict(cfg_scale=args.cfg_scale) if settings is None
                         else settings)
    if args.eta is not None and not 0 <= args.eta <= 1:
        raise UserError(f'--eta must be in [0, 1], got {args.eta}')
    if args.fps is not None and not args.fps > 0:
        raise UserError(f'--fps must be > 0, got {args.fps}')
    # Options of the other kind of output were ignored without a word (an mp4 still at
    # 32x32 after --upscale 4).
    clip_options = [f'--{name}' for name in ('fps', 'gif') if getattr(args, name)]
    if not video and clip_options:
        raise UserError(f'{" / ".join(clip_options)}: for video models; this model makes '
                        'pictures (model.latent_shape has no frame axis)')
    grid_options = [f'--{name}' for name in ('nrow', 'upscale')
                    if getattr(args, name) is not None]
    if video and grid_options and not (args.out or '').endswith('.npz'):
        raise UserError(f'{" / ".join(grid_options)}: for the picture grid of image '
                        'models; this model makes clips (one mp4 per sample, at its own '
                        'size)')
    if video and args.out is not None and not args.out.endswith('.npz'):
        from mmsora.apis import video_paths
        try:
            video_paths(args.out, [None] if text else [0])
        except ValueError:
            label = '' if text else '_label0'
            raise UserError(f'--out for video samples is NAME.mp4 (files NAME_000{label}.mp4, '
                            '...), NAME.gif (GIFs alone), a folder, or NAME.npz (all samples '
                            f'in one file), got {args.out!r}') from None
    # Checked before sampling, not when the samples are written.
    from mmsora.apis import is_clip_folder
    check_output_path(args.out, '--out',
                      folder=video and bool(args.out) and is_clip_folder(args.out))
    check_output_path(args.sample_dir, '--sample-dir', folder=True)
    if not video and args.out is not None and not args.out.endswith('.npz'):
        from PIL import Image
        if Image.registered_extensions().get(
                osp.splitext(args.out)[1].lower()) not in Image.SAVE:
            raise UserError(f'--out {args.out}: pictures are saved as one grid image, '
                            'e.g. samples.png (.png, .jpg, .webp, ...), or as NAME.npz')
    if text and args.labels:  # not 'out of range' of its one (null) class
        raise UserError(LABELS_ON_TEXT_MODEL)
    if args.labels and 'random' in args.labels and args.labels != ['random']:
        raise UserError("--labels random draws every sample's class: give it alone "
                        '(with --num-samples), or class ids')
    from mmsora.apis.inference import check_label_ids
    check_label_ids([y for y in args.labels or [] if y != 'random'], num_classes)


def check_guidance_floor(args, settings: dict) -> None:
    """Refuse a guidance scale below 1 in ``settings`` (what sampling will use: the
    flag over the config's ``sample_cfg``), named by where it came from: the floor was
    the flag's alone, and a config's sample_cfg.cfg_scale=-3 sampled with negative
    guidance. Values that are no number are sampling's to refuse (check_cfg_scale)."""
    import numbers
    scale = settings.get('cfg_scale')
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not scale < 1:
        return
    where = cfg_scale_source(args)
    if where != 'sample_cfg.cfg_scale':
        raise UserError(f'{where} must be >= 1 (1 disables guidance), got {scale}')
    raise UserError(f'sample_cfg.cfg_scale must be >= 1 (1 disables guidance), got {scale}: '
                    'give --cfg-scale, or set it >= 1 in the config')


def cfg_scale_source(args) -> str:
    """Where the guidance scale sampling takes came from, as the user gave it: the
    flag, over --sampler-options cfg_scale=..., over the config's sample_cfg (a NaN
    given in --sampler-options was named 'sample_cfg.cfg_scale')."""
    if args.cfg_scale is not None:
        return '--cfg-scale'
    if 'cfg_scale' in parse_sampler_options(args.sampler_options):
        return '--sampler-options cfg_scale'
    return 'sample_cfg.cfg_scale'


def precheck_args(args, prompts=None) -> None:
    """:func:`check_args` from the config alone (whether the model makes clips, its
    classes), then the prompts, the sampling settings and the checkpoint's objective,
    before the weights load: a wrong --out was named only once a large model had
    loaded. Mistakes in the config itself are left to the model's build. The steps
    tools/test.py takes too are mmsora.apis.run_checks'."""
    from mmsora.apis.run_checks import check_run_objective, load_run_config
    loaded = load_run_config(args.run, args.cfg_options)
    if loaded is None:  # said where init_model meets it
        return
    cfg, saved = loaded
    from mmsora.apis.inference import check_makes_pictures
    from mmsora.utils.config_keys import (check_denoiser_guides, model_setting,
                                          text_conditioned_config)
    try:  # (a config without latent_shape, or num_classes, takes its class's default:
        # every check here was skipped for it, and the weights loaded first)
        model = cfg.model
        video = len(model_setting(model, 'latent_shape')) == 4
        text = text_conditioned_config(model)
    except Exception:  # said where init_model meets it
        return
    check_frame_axis(model, video)
    if not text:  # (a text model's --labels are refused as such by check_args)
        from mmsora.apis.class_names import class_ids, run_classes
        args.run_classes = run_classes(cfg)  # (read once: main names the clips by them)
        args.labels = class_ids(args.labels, *args.run_classes)
    try:
        classes = model_setting(model, 'num_classes')
    except KeyError:
        classes = None
    settings = sample_settings(args, cfg.get('sample_cfg', {}))
    check_args(args, classes if isinstance(classes, int) else None, video, text, settings)
    check_prompts(args, prompts, text)
    check_sampling(args, cfg, settings)
    check_denoiser_guides(model, settings.get('cfg_scale', 1.0), 'this run',
                          cfg_scale_source(args), 'sample with --cfg-scale 1')
    try:  # (latents without a VAE were sampled, then refused at the save)
        vae, shape = model_setting(model, 'vae'), model_setting(model, 'latent_shape')
    except KeyError:  # (a model of one's own without them)
        pass
    else:
        check_makes_pictures(vae, shape)
    # a work dir: its own config, unless --cfg-options changed the objective
    check_run_objective(model, args.run, args.checkpoint, saved)


def check_frame_axis(model_cfg, video: bool) -> None:
    """Refuse a picture latent shape (C, H, W) for a denoiser that makes clips (takes
    clips (N, C, T, H, W) alone: its class says ``makes_clips = True``), from the
    config: --cfg-options model.latent_shape=[16,4,4] on a video run was taken for a
    picture model ('--out DIR/: pictures are saved as one grid image'), or failed in
    the denoiser. The denoiser is found as the model's build finds it (a registered
    name, scoped or not, or the class given: a subclass of VideoDiT, one's own clip
    denoiser); a list of mmsora's type names missed those."""
    from mmsora.utils.config_keys import denoiser_class, model_setting
    cls = denoiser_class(model_cfg)
    if not video and getattr(cls, 'makes_clips', False):
        shape = list(model_setting(model_cfg, 'latent_shape'))
        given = '' if 'latent_shape' in model_cfg else ' (not given: the model\'s default)'
        raise UserError(f'model.latent_shape {shape}{given} has no frame axis, but this run\'s '
                        f'denoiser {cls.__name__} makes clips: give it as (C, T, H, W), '
                        f'model.latent_shape=[{shape[0]},T,{",".join(map(str, shape[1:]))}] '
                        'with T latent frames')


def sample_settings(args, defaults) -> dict:
    """The config's sample_cfg (``defaults``), all of it (eta, guidance_channels, ...;
    a typo there is refused by the sampler), under the command line's settings; its
    sampler's options stay with its sampler. Sampler and steps left unset fall back to
    the objective's own defaults."""
    from mmsora.diffusion.scheduler_sampling import NOT_SAMPLE_ARGS, merge_sample_cfg
    settings = merge_sample_cfg(defaults, dict(sampler=args.sampler) if args.sampler
                                else None, parse_sampler_options(args.sampler_options),
                                num_steps=args.steps, cfg_scale=args.cfg_scale, eta=args.eta)
    for key in NOT_SAMPLE_ARGS:
        settings.pop(key, None)
    return settings


def check_sampling(args, cfg, settings: dict) -> None:
    """--sampler and --sampler-options (over the config's sample_cfg: ``settings``,
    :func:`sample_settings`) against the config's objective, which alone is built: a
    wrong sampler name was refused once the weights had loaded (30 s and 5.7 GB for
    Stable Cascade lite), and a wrong value of an option or of --steps (DDIM's
    spacing=evn) still was. (The guidance floor is :func:`check_args`'.)"""
    from mmsora.utils.config_keys import check_sample_settings_of
    try:  # (the sampler's one-line ValueError, as the sampling raised it)
        check_sample_settings_of(cfg.model, settings)
    except ValueError as e:
        # sampling's rule for cfg_scale cannot say where the value came from (the
        # flag, --sampler-options, the config's sample_cfg or --cfg-options
        # sample_cfg.cfg_scale)
        if not str(e).startswith('cfg_scale must be '):
            raise
        where = cfg_scale_source(args)
        raise UserError(f'{where}{str(e)[len("cfg_scale"):]}') from None


def sample_counting(model, labels, seed, batch_size, prompts, sample_kwargs):
    """``(samples, nfes)``: :func:`~mmsora.apis.sample_images` batch by batch (the
    same samples: sample i depends on its label or prompt and its seed alone), and
    each batch's model evaluations (the objective's ``last_nfe``). An adaptive
    sampler's (ode_dopri5) differ from batch to batch: the last batch's alone was
    reported. An objective of one's own may count none: [] (it was an
    AttributeError once the samples were drawn, and they were not saved)."""
    from mmsora.apis import sample_images
    outs, nfes = [], []
    for start in range(0, len(labels), batch_size):
        part = slice(start, start + batch_size)
        seeds = [seed + i for i in range(len(labels))[part]]
        outs.append(sample_images(model, labels[part], seeds, batch_size=batch_size,
                                  progress=True, prompts=prompts and prompts[part],
                                  **sample_kwargs))
        nfe = getattr(model.diffusion, 'last_nfe', None)
        if nfe is not None:
            nfes.append(nfe)
    return torch.cat(outs), nfes


def nan_warning(bad: int, n: int, model, sample_kwargs: dict) -> str:
    """The warning line for ``bad`` of ``n`` samples holding NaN or inf. A diffusers
    scheduler's steps refuse to make NaN from finite inputs (``scheduler_sample_loop``):
    then the model made them. Other samplers' steps may have (it blamed the weights
    alone, where 4 Euler-ancestral steps had made them)."""
    import inspect

    from mmsora.registry import NOISE_SCHEDULERS
    sampler, steps = sample_kwargs.get('sampler'), sample_kwargs.get('num_steps')
    sample = getattr(getattr(model, 'diffusion', None), 'sample', None)
    if callable(sample):  # None: the objective's default, named
        params = inspect.signature(sample).parameters
        if sampler is None and 'sampler' in params:
            sampler = params['sampler'].default
        if steps is None and 'num_steps' in params:
            steps = params['num_steps'].default
    weights = ("the checkpoint's weights may be damaged, or the run diverged (see its "
               'logged loss)')
    if sampler in NOISE_SCHEDULERS.module_dict:
        cause = (f"the model's outputs held them ({sampler}'s steps are checked to keep "
                 f'finite inputs finite): {weights}')
    else:
        cause = (f"the model's outputs or the sampler's steps ({sampler}, {steps} steps) "
                 'made them: sample with another --steps or --sampler; if they stay, '
                 f'{weights}')
    overflow = (' or fp16 overflowed (try --precision bf16)'
                if sample_kwargs.get('precision') == 'fp16' else '')
    return f'warning: {bad} of {n} samples hold NaN or inf (saved black): {cause}{overflow}'


def said_nfe(nfes) -> str:
    """The model evaluations of :func:`sample_counting`'s batches in words: one count,
    or the range and the total where the batches differ."""
    if not nfes:
        return 'NFE not reported by the objective'
    if min(nfes) == max(nfes):
        return f'{nfes[0]} model evaluations (NFE) per batch'
    return (f'{min(nfes)} to {max(nfes)} model evaluations (NFE) per batch, {sum(nfes)} '
            f'over the {len(nfes)} batches')


def parse_sampler_options(items):
    """``['atol=1e-6', 'last_step=None']`` -> ``{'atol': 1e-06, 'last_step': None}``."""
    import ast
    options = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key.isidentifier():
            raise UserError(f'malformed --sampler-options entry {item!r}: expected '
                            'KEY=VALUE, e.g. atol=1e-6')
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value  # a bare word: a string (diffusion_form=SBDM)
    return options


def parse_resolution(text):
    """'480x854' -> (480, 854); '256' -> (256, 256); None -> None."""
    if text is None:
        return None
    parts = text.lower().split('x')
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else map(int, parts)
    except ValueError:
        raise UserError(f'--resolution takes HxW or S (e.g. 480x848), got {text!r}') from None
    if h < 1 or w < 1 or len(parts) > 2:
        raise UserError(f'--resolution takes HxW or S (e.g. 480x848), got {text!r}')
    return h, w


def read_prompts(args):
    """The prompts of --prompt or --prompt-file (one a line; blank lines and lines
    starting with # skipped; a UTF-8 byte order mark dropped), read before the model
    loads: a missing file was named only after the weights had loaded, and a file
    saved with a byte order mark gave its first prompt with the mark (or sampled its
    first comment line)."""
    if args.prompt and args.prompt_file:
        raise UserError('--prompt and --prompt-file exclude each other: give the prompts '
                        'one way')
    if not args.prompt_file:
        if any(not p.strip() for p in args.prompt or []):  # (encoded as a caption '')
            raise UserError("--prompt '': an empty prompt is an empty caption to the text "
                            "encoder, not the model's null caption that guidance uses: give "
                            'text')
        return list(args.prompt or []) or None
    from mmsora.apis.inference import read_prompt_file
    return read_prompt_file(args.prompt_file)


def check_prompts(args, prompts, text: bool, text_encoder: bool = True) -> None:
    """The prompts (or none) against the kind of model: from the config before the
    weights load, then from the model built."""
    if text:
        if not prompts:
            raise UserError('this model is text-conditioned: give --prompt TEXT ... or '
                            '--prompt-file FILE')
        if args.labels:
            raise UserError(LABELS_ON_TEXT_MODEL)
        if not text_encoder:
            raise UserError('this text-conditioned model has no text encoder: set '
                            'model.text_encoder.pretrained_path=DIR with --cfg-options')
    elif prompts:
        raise UserError('--prompt / --prompt-file are for text-conditioned models; this '
                        'one takes class labels (--labels) or none')


def check_launcher(args, mass: bool) -> None:
    """--launcher (and --sample-dir) only with mass sampling into --out NAME.npz, and
    under torchrun only with --launcher: its processes each drew every sample and wrote
    the same files (a grid, mp4s or the .npz's shards)."""
    world = torchrun_processes()
    torchrun = world > 1
    out = f'--out {args.out}' if args.out else 'no --out'
    if not mass and torchrun:
        raise UserError(f'started as one of {world} torchrun processes with {out}: a grid '
                        "or mp4s are one process's job: run it without torchrun, or "
                        'sample many with --out NAME.npz --launcher pytorch')
    if not mass and args.launcher != 'none':
        raise UserError(f'--launcher {args.launcher} is for mass sampling into --out '
                        f"NAME.npz; with {out} (a grid or mp4s, one process's job) run it "
                        'without --launcher')
    check_torchrun_launcher(args.launcher)
    if args.sample_dir and not mass:
        raise UserError('--sample-dir is for mass sampling: give --out NAME.npz')
    grid = [f'--{name}' for name in ('nrow', 'upscale') if getattr(args, name) is not None]
    if mass and (grid or args.gif):  # (they were ignored without a word)
        given = ' / '.join(grid + ['--gif'] * args.gif)
        raise UserError(f'{given}: --out {args.out} writes the samples as they are, no grid '
                        'or GIFs; for one file per sample give --sample-dir DIR (PNGs, '
                        'mp4s for clips)')


def main(argv=None):
    args = parse_args(argv)
    mass = args.out is not None and args.out.endswith('.npz')
    check_launcher(args, mass)  # before minutes of loading weights
    from mmsora.utils.dist import on_cpu, start_on_device
    start_on_device(args.device, args.launcher)  # (gloo for --device cpu, else a GPU each)
    if mass:
        check_samples_not_finished(args.out)
    if args.launcher != 'none':
        from mmsora.apis import init_sampling_processes
        args.device = init_sampling_processes(args.launcher, args.device)
    keep_freed_memory_on_cpu(args, on_cpu(args.device))
    from mmsora.apis import init_model, save_image_grid, save_videos
    from mmsora.apis.video import DEFAULT_FPS
    prompts = read_prompts(args)
    precheck_args(args, prompts)  # from the config alone: before minutes of loading weights
    model, cfg = init_model(args.run, args.checkpoint, device=args.device,
                            cfg_options=args.cfg_options, use_ema=not args.no_ema,
                            checkpoint_option='--checkpoint CKPT', trained_option='--no-ema')
    video = len(model.latent_shape) == 4  # (C, T, H, W)
    if hasattr(model, 'vae'):  # (a config the pre-check could not read; before sampling)
        from mmsora.apis.inference import check_makes_pictures
        check_makes_pictures(model.vae, model.latent_shape)
    from mmengine.dist import get_rank
    if get_rank() == 0:  # which file of a work dir (or of a copy of one) is sampled
        print(f'weights: {model.loaded_from} ({model.loaded_weights})', flush=True)
    defaults = cfg.get('sample_cfg', {})
    sample_kwargs = sample_settings(args, defaults)
    from mmsora.apis.class_names import class_ids, name_clip_files, run_classes, said_labels
    # (the pre-check's, else read here: a config it could not read)
    class_names, unknown = getattr(args, 'run_classes', None) or run_classes(cfg)
    if not model.text_conditioned:  # (names left by a config the pre-check could not read)
        args.labels = class_ids(args.labels, class_names, unknown)
    # (the guidance floor on what sampling will use: a config the pre-check could not
    # read too)
    check_args(args, model.num_classes, video, model.text_conditioned, sample_kwargs)
    if args.num_frames is not None or args.resolution is not None:
        from mmsora.apis.inference import set_output_size
        try:
            set_output_size(model, args.num_frames, parse_resolution(args.resolution))
        except ValueError as e:
            given = ' '.join(f'--{name.replace("_", "-")} {getattr(args, name)}'
                             for name in ('num_frames', 'resolution')
                             if getattr(args, name) is not None)
            raise UserError(f'{given}: {e}') from None
    check_prompts(args, prompts, model.text_conditioned, model.text_encoder is not None)
    drawn = args.labels == ['random']
    if drawn:  # (DiT's sample_ddp.py: torch.randint over the classes)
        from mmsora.apis.mass_sampling import random_labels
        args.labels = None
    n = args.num_samples or (len(args.labels) if args.labels else
                             len(prompts) if prompts else 16)
    given = args.labels or prompts or []
    if len(given) > n:  # (they were left out without a word)
        what = 'labels' if args.labels else 'prompts'
        note(f'--num-samples {n}: the last {len(given) - n} of the {len(given)} {what} '
             'given are not sampled')
    pool = (random_labels(model.num_classes, n, args.seed) if drawn else
            args.labels or list(range(model.num_classes)))
    labels = [pool[i % len(pool)] for i in range(n)]
    # (the keys a mass-sampling run's fingerprint has always held)
    sample_kwargs = dict(dict(sampler=None, num_steps=None, cfg_scale=1.0), **sample_kwargs)
    from mmsora.apis.inference import default_precision
    sample_kwargs['precision'] = args.precision or default_precision(args.device, defaults)
    if sample_kwargs['sampler'] == 'ode_dopri5' and args.steps is not None:  # (unused
        # without a word before)
        note(f'--steps {args.steps}: ode_dopri5 is adaptive and takes the steps its '
             'tolerances need (--sampler-options atol=1e-6 rtol=1e-3): --steps is not used')
    if mass:  # fixed per-index seeds and batches: the same on any number of processes
        from mmengine.dist import is_main_process

        from mmsora.apis import mass_sample
        from mmsora.apis.mass_sampling import sampling_line
        if is_main_process():  # (what an FID is scored at: DiT's sample_ddp.py uses cfg
            # 1.5, sample.py 4.0; the config's sample_cfg chose without a word)
            print(sampling_line(n, sample_kwargs, drawn), flush=True)
        mass_sample(model, n, pool, seed=args.seed, batch_size=args.batch_size, out=args.out,
                    sample_dir=args.sample_dir,
                    fps=args.fps or defaults.get('fps', DEFAULT_FPS),
                    prompts=prompts, **sample_kwargs)
        if is_main_process():
            second = 'prompts: their prompts' if prompts else 'arr_1: their labels'
            print(f'saved {n} sample{"s" * (n != 1)} to {args.out} (arr_0: uint8 samples; '
                  f'{second})')
        from mmsora.utils.dist import close_process_group
        close_process_group()
        return
    if prompts:
        prompts = [prompts[i % len(prompts)] for i in range(n)]
        labels = [None] * n
    images, nfes = sample_counting(model, labels, args.seed, args.batch_size, prompts,
                                   sample_kwargs)
    bad = int((~torch.isfinite(images.flatten(1))).any(1).sum())
    if bad:  # else they are saved black without a word
        print(nan_warning(bad, n, model, sample_kwargs), file=sys.stderr)
    # (a 300-word prompt filled the line)
    what = (f'prompts {[p if len(p) <= 60 else p[:57] + "..." for p in prompts]}'
            if prompts else said_labels(labels, class_names))
    nfe = said_nfe(nfes)
    if video:
        fps = args.fps or defaults.get('fps', DEFAULT_FPS)
        paths = save_videos(images, args.out or 'samples.mp4', fps, labels, gif=args.gif)
        if not prompts:  # (sample_000_label0_Biking.mp4: ids mapped to folders by hand)
            paths = name_clip_files(paths, labels, class_names)
        print(f'saved {n} clip{"s" * (n != 1)} ({what}, {fps:g} fps) to {", ".join(paths)}; '
              f'{nfe}')
        return
    out = args.out or 'samples.png'
    save_image_grid(images, out, nrow=args.nrow or 8, upscale=args.upscale or 1)
    print(f'saved {n} sample{"s" * (n != 1)} ({what}) to {out}; {nfe}')


if __name__ == '__main__':
    sys.exit(run_cli(main))
