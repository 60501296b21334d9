"""Train a model from a config: ``python tools/train.py CONFIG [options]``.

The OpenMMLab command line (see ``--help``); several GPUs or nodes go through
``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``.
"""
import argparse
import errno
import os
import os.path as osp
import sys

import torch

from mmsora.datasets.store_checks import (check_latent_store, check_stores_exist,
                                          note_video_dataset_fps)
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.checkpoint_choice import check_checkpoint_complete
from mmsora.utils.cli import (ArgumentParser, Interrupted, RunError, UserError, add_malloc_option,
                              add_note, check_output_path, check_torchrun_launcher,
                              is_launch_rank0, keep_freed_memory_on_cpu, note, run_cli)
from mmsora.utils.config_loading import load_config, parse_config_and_preset

# The sampling flags of the reference training scripts, which this tool takes from the
# config: what an unrecognised one is told to give instead. SiT's train.py --cfg-scale
# guides its samples during training; here the config's sample_cfg does (SiT's configs
# set cfg_scale there), which a SampleVisualizationHook samples with (README: Samples
# during training) and tools/infer.py takes for the run.
STAND_INS = {
    '--cfg-scale': ("--cfg-options sample_cfg.cfg_scale={} (the guidance of a "
                    "SampleVisualizationHook's samples, and the run's default in "
                    'tools/infer.py)', 'S'),
}


def parse_args(argv=None):
    parser = ArgumentParser(description='Train an mmsora model', stand_ins=STAND_INS)
    parser.add_argument('config', nargs='?', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: ./work_dirs/CONFIG_NAME)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in the '
                        'work dir when no CKPT is given (optimizer, EMA, iteration, RNG)')
    parser.add_argument('--load-from', help='initialise the weights from CKPT only '
                        '(fresh optimizer and schedule): a checkpoint file, a work dir (its '
                        'newest) or a diffusers DiT folder')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: AmpOptimWrapper (bf16 where supported, '
                        'else fp16 with loss scaling) on CUDA, bf16 autocast on CPU')
    parser.add_argument('--no-amp', action='store_true',
                        help="full precision (fp32): drops the config's AmpOptimWrapper "
                        '(the card presets train in bf16)')
    parser.add_argument('--deepspeed', metavar='PRESET',
                        help='DeepSpeed ZeRO through FlexibleRunner: deepspeed_zero1, '
                        'deepspeed_zero2, deepspeed_zero2_offload, deepspeed_zero3, '
                        'deepspeed_zero3_offload (configs/_base_/strategies), a preset '
                        'file (.py), or a DeepSpeed JSON config (.json)')
    parser.add_argument('--fsdp', nargs='?', const='fsdp', metavar='PRESET',
                        help='PyTorch FSDP through FlexibleRunner: fsdp (the default), '
                        'fsdp_bf16 (bf16 compute from float32 shards; '
                        'configs/_base_/strategies) or a file')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the denoiser (CompileDenoiserHook)')
    parser.add_argument('--no-tf32', action='store_true',
                        help='keep float32 matmuls in full fp32 on Ampere and newer '
                        'GPUs (default there: TF32)')
    add_malloc_option(parser)
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries, e.g. train_cfg.max_iters=1000 '
                        "model.denoiser.depth=4 'optim_wrapper.optimizer.lr=2e-4'")
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    check_amp_takes_no_value(sys.argv[1:] if argv is None else list(argv))
    parser.stand_ins.update(config_hook_stand_ins(parser, argv))
    args = parse_config_and_preset(parser, argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def config_hook_stand_ins(parser, argv=None) -> dict:
    """What to give for their flags that set a hook the config given already has
    (foreign_flags.HOOK_FLAGS: SiT's --sample-every on the SiT-XL/2 config is its
    SampleVisualizationHook's interval, not a hook more; Stable Cascade's --ema-beta,
    its EMA hook's momentum, at the index it has), as ``parser``'s stand-ins:
    the config is read only where such a flag is given (it is refused below, with
    them), and where it does not read, FOREIGN_HINTS' line is said."""
    from mmsora.utils.foreign_flags import HOOK_FLAGS, hook_stand_ins
    given = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not any(a.partition('=')[0].replace('_', '-') in HOOK_FLAGS for a in given):
        return {}
    # (the flags and their values out first: a bare flag's value was taken as the config)
    rest, i = [], 0
    while i < len(given):
        flag = given[i].partition('=')[0].replace('_', '-')
        if flag in HOOK_FLAGS:
            i += 1 if '=' in given[i] or i + 1 == len(given) or \
                given[i + 1].startswith('--') else 2  # (-0.5 is a value)
            continue
        rest.append(given[i])
        i += 1
    known = parser.parse_known_args(rest)[0]
    config = known.config
    if config is None and isinstance(getattr(known, 'fsdp', None), str):
        config = known.fsdp  # (--fsdp CONFIG: parse_config_and_preset takes it back)
    try:  # (mmengine's reader: load_config's notes would come before the refusal's line)
        from mmengine.config import Config
        return hook_stand_ins(Config.fromfile(config, import_custom_modules=False))
    except Exception:  # (no config, or one that fails: said once the flag is dropped)
        return {}


# What one might give --amp as a value (argparse said 'unrecognized arguments: fp16').
AMP_VALUES = ('fp16', 'float16', 'half', 'bf16', 'bfloat16', 'fp32', 'float32')


def check_amp_takes_no_value(argv) -> None:
    """``--amp fp16`` / ``--amp=bf16``: refused in one line saying how the dtype is
    chosen."""
    for i, arg in enumerate(argv):
        value = (arg[len('--amp='):] if arg.startswith('--amp=')
                 else argv[i + 1] if arg == '--amp' and i + 1 < len(argv) else None)
        if value is not None and (arg != '--amp' or value.lower() in AMP_VALUES):
            raise UserError(f'--amp takes no value (got {value}): it trains in bfloat16 '
                            'where the GPU has it, else float16; for float16: --amp '
                            '--cfg-options optim_wrapper.dtype=float16')


def build_train_config(args):
    """The config to run, with the command line applied."""
    cfg = load_config(args.config)
    # (on --resume the schedule is the checkpoint's: note_schedule_kept says so)
    apply_cfg_options(cfg, args.cfg_options, schedule_note=args.resume is None)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    check_output_path(cfg.work_dir, '--work-dir' if args.work_dir else 'work_dir', folder=True)
    # (mmsora.engine's modules here, not at the top: --help and a mistaken argument are
    # answered without importing the engine)
    from mmsora.engine.load_from_checks import (check_denoiser_file_matches,
                                                check_inflation_matches,
                                                check_load_from_matches, load_from_kind,
                                                note_load_from_run, start_from_training_file)
    from mmsora.engine.resume_checks import (check_resume_matches,
                                             check_resume_matches_strategy,
                                             note_resumed_config_changes)
    from mmsora.engine.run_config_checks import (build_model_on_meta, check_vae_folder,
                                                 note_missing_hooks, note_named_layout,
                                                 note_small_train_set)
    from mmsora.engine.strategies.train_options import (accumulation_of, apply_amp,
                                                        drop_amp, fit_amp_to_device)
    from mmsora.engine.work_dir import latest_checkpoint
    if args.amp and args.no_amp:
        raise UserError('--amp and --no-amp exclude each other: give one (--amp: mixed '
                        "precision; --no-amp: fp32, over the config's AmpOptimWrapper)")
    if args.no_amp:  # (--cfg-options could not do it: OptimWrapper refused dtype)
        drop_amp(cfg)
    elif args.amp:
        apply_amp(cfg)
    else:  # a card preset's AmpOptimWrapper without CUDA: what --amp gives there
        fit_amp_to_device(cfg)
    from mmsora.utils.config_keys import check_model_config
    check_model_config(cfg.get('model'))  # (a typo or a wrong value, its key named)
    meta_model = build_model_on_meta(cfg)
    check_vae_folder(meta_model)
    from mmsora.utils.config_keys import check_training_keys
    # Before the presets rewrite the config (DeepSpeed replaces the optimizer wrapper
    # and the EMA hook): a typo would fail after the Runner's start-up output, or
    # later. It reads no file, so it comes before the checks of --resume's checkpoint.
    # (The model was checked above, its types too.)
    check_training_keys(cfg, check_model=False)
    note_missing_hooks(cfg)
    accumulation_of(cfg)  # a whole number >= 1 (mmengine asserts after its start-up)
    if args.resume is not None and args.load_from is not None:
        raise UserError('--resume and --load-from exclude each other: --resume '
                        'continues a run (optimizer, EMA, iteration), --load-from '
                        'starts a new one from given weights; to continue a run begun '
                        'with --load-from, drop --load-from (its checkpoints hold what it '
                        'has trained from those weights)')
    config_load_from = cfg.get('load_from')  # (a config's own: --resume may replace it)
    if args.resume == 'auto':
        latest = latest_checkpoint(cfg.work_dir)
        # nothing saved yet (a requeued job's first start, or another --work-dir than
        # meant): said in one line, instead of mmengine's 'resumed from ... None'
        cfg.resume, cfg.load_from = latest is not None, latest
        if latest is None and is_launch_rank0():
            print(f'--resume: no checkpoint in {cfg.work_dir} yet: the run starts at '
                  'iteration 0', flush=True)
    elif args.resume is not None:
        from mmsora.engine.strategies import is_zero_checkpoint
        if is_zero_checkpoint(args.resume):  # a DeepSpeed checkpoint folder
            cfg.resume, cfg.load_from = True, args.resume
        elif osp.isdir(args.resume):
            raise UserError(f'--resume {args.resume}: a folder, not a checkpoint file (to '
                            'continue the run in a work dir: --work-dir DIR --resume)')
        elif not osp.isfile(args.resume):
            from mmsora.utils.checkpoint_choice import stopped_replace_hint
            raise UserError(f'--resume checkpoint not found: {args.resume}'
                            f'{stopped_replace_hint(args.resume)}')
        else:
            check_checkpoint_complete(args.resume)
            cfg.resume, cfg.load_from = True, args.resume
    # (a file: not a DeepSpeed folder; with --deepspeed a file is refused below, naming
    # the way)
    if (cfg.get('resume') and isinstance(cfg.get('load_from'), str)
            and osp.isfile(cfg.load_from) and not args.deepspeed):
        check_resume_matches(cfg, meta_model, cfg.load_from,
                             '--resume' if args.resume is not None else 'resume = True, load_from')
    option = '--load-from'
    if args.load_from is None and not cfg.get('resume') and isinstance(config_load_from, str):
        # a config's load_from (OpenMMLab's way, or --cfg-options load_from=F) goes the
        # way --load-from goes: a DiT file reached mmengine's loader and its EMA hook
        # failed with a KeyError traceback; under --resume with nothing saved yet (a
        # requeued job's first start) the run starts from it (it was dropped)
        args.load_from, option = config_load_from, 'load_from'
    training_file = None  # a DiT / fast-DiT / SiT train.py's file given to --load-from
    run_checkpoint = None  # a run's checkpoint given to --load-from (said once checked)
    if args.load_from is not None:
        from mmsora.utils.checkpoint_choice import resolve_checkpoint
        from mmsora.utils.diffusers_dit import diffusers_dit_folder
        from mmsora.utils.zero_checkpoint import is_zero_checkpoint
        try:  # a work dir: its newest checkpoint, as infer and export_denoiser take it
            found = resolve_checkpoint(args.load_from)
        except FileNotFoundError as e:
            raise UserError(f'{option} {e}') from None
        if found != args.load_from:
            if is_launch_rank0():
                print(f'{option} {args.load_from}: its newest checkpoint, {found}', flush=True)
            args.load_from = found
        if is_zero_checkpoint(found):
            raise UserError(f'{option} {found}: a DeepSpeed checkpoint folder: convert it '
                            'with tools/zero_to_state_dict.py and start from the file it '
                            'writes (--load-from, or model.pretrained_denoiser with '
                            '--deepspeed), or continue that run: --resume it with '
                            '--deepspeed')
        if not osp.isfile(found) and diffusers_dit_folder(found) is None:
            raise UserError(f'{option} checkpoint not found: {found}')
        cfg.resume = False
        kind, state_dict, checkpoint = load_from_kind(args.load_from)
        from mmsora.utils.trained_settings import (checkpoint_objective, objective_differences,
                                                   objective_settings, said_objective_differences)
        # (an mmengine run's config, or a SiT training file's args)
        trained, settings = checkpoint_objective(checkpoint), objective_settings(cfg.model)
        theirs, ours = (x and x['type'] for x in (trained, settings))
        dit_time = ((cfg.model.get('diffusion') or {}).get('timestep_convention') == 'dit'
                    and theirs == 'GaussianDiffusion')  # (docs/sit.md's recipe: meant)
        if theirs and ours and theirs != ours and not dit_time:  # a fine-tune across
            # objectives (DiT into SiT, docs/sit.md) may be meant: said, not refused
            note(f'--load-from {args.load_from}: trained with the {theirs} objective, this '
                 f'run trains {ours} from its weights (docs/sit.md: timestep_convention)')
        differ = objective_differences(trained, settings)
        if differ:  # (a SiT noise-prediction file trained on as velocity without a word)
            was, now, options = said_objective_differences(differ)
            note(f'--load-from {args.load_from}: trained with {was}, this run trains with '
                 f'{now} from its weights (a fine-tune to another parametrisation; to train '
                 f'on as it was: --cfg-options {options})')
        video = cfg.model.get('denoiser', {}).get('type') == 'VideoDiT'
        if kind == 'run' or (kind == 'image_run' and not video):
            if not args.deepspeed and meta_model is not None:  # (with --deepspeed a
                # file is refused below, naming the way)
                check_load_from_matches(meta_model, args.load_from, state_dict)
            cfg.load_from = args.load_from
            run_checkpoint = checkpoint
        else:
            # An original DiT / fast-DiT file, or an image run's checkpoint for a video
            # model: the denoiser loads it strictly (VideoDiT inflates it exactly), not
            # mmengine's non-strict loader, which would skip mismatched keys silently.
            if kind == 'denoiser' and not video and meta_model is not None:
                check_denoiser_file_matches(meta_model, args.load_from, checkpoint)
            elif video and meta_model is not None:
                check_inflation_matches(meta_model, args.load_from, kind, checkpoint)
            cfg.load_from = None
            cfg.model.pretrained_denoiser = args.load_from
            if 'pretrained_entry' in cfg.model:  # (a work dir's dumped config keeps the
                # entry its run took from its own file)
                cfg.model.pretrained_entry = 'auto'
            if kind == 'denoiser' and 'ema' in checkpoint and 'model' in checkpoint:
                training_file = checkpoint  # (its entries: once the hooks are known)
    if cfg.get('load_from') and cfg.model.get('pretrained_denoiser'):
        # the run's checkpoint gives every weight (--resume, or --load-from a run): a
        # pretrained_denoiser (a work dir's dumped config keeps its run's --load-from)
        # was read for nothing, and stopped the resume once that file was gone
        cfg.model.pretrained_denoiser = None
    seed = (cfg.get('randomness') or {}).get('seed')
    if seed is not None and 'init_seed' not in cfg.model:
        # The initial weights from the run's seed, wherever the runner builds the model
        # and on every process alike (FSDP / DeepSpeed start from one whole model).
        cfg.model.init_seed = seed
    from mmsora.engine.strategies import (apply_global_batch, apply_speed_options,
                                          apply_strategy, check_accumulation,
                                          drop_disabled_hooks, fit_loader_workers,
                                          launcher_world_size)
    from mmsora.engine.strategies.train_options import (accumulation_setting,
                                                        set_run_strategy)
    # The run's strategy (the --deepspeed / --fsdp preset with its strategy.KEY=VALUE
    # options, or the config's own), chosen once and put in cfg.strategy first, where
    # every reader of the accumulation finds it: the global batch split, the named
    # layout's note and the accumulation checks (a preset's own
    # gradient_accumulation_steps=4 was left out of the split, and each optimizer step
    # saw 4 global batches); apply_strategy fills in its 'auto' values last.
    set_run_strategy(cfg, args.deepspeed, args.fsdp, args.cfg_options)
    # A config's global_batch_size fixes the batch across process counts (before
    # DeepSpeed's presets read the per-process batch).
    world_size = launcher_world_size(args.launcher)
    per_process = apply_global_batch(cfg, world_size)
    if per_process is not None and is_launch_rank0():
        accumulation, setting = accumulation_setting(cfg)  # (what the split divided by)
        print(f'global_batch_size={cfg.global_batch_size}: train_dataloader.batch_size='
              f'{per_process} on each of {world_size} process(es)'
              + (f' x {accumulation} accumulation steps ({setting})'
                 if accumulation > 1 else ''), flush=True)
    elif per_process is None:
        note_named_layout(args.config, cfg, world_size)
    note_video_dataset_fps(cfg)
    apply_speed_options(cfg, compile=args.compile)
    # e.g. no checkpoint inside an accumulated step; before the strategy's 'auto'
    # values are filled in, so that its lines name the setting the user gave
    check_accumulation(cfg)
    apply_strategy(cfg)  # (the strategy set_run_strategy put in the config)
    drop_disabled_hooks(cfg)  # default_hooks.loss_guard=None: off
    if training_file is not None:  # (which EMA hook the strategy left decides)
        start_from_training_file(cfg, args.load_from, training_file)
    fit_loader_workers(cfg)  # num_workers=0 with persistent_workers: torch refuses
    if isinstance(cfg.get('train_dataloader'), dict):  # mmengine's default, pseudo_collate,
        # leaves the batch a list (an AttributeError in the model): ours stack it
        if not cfg.train_dataloader.get('collate_fn'):
            cfg.train_dataloader.collate_fn = dict(type='default_collate')
    check_latent_store(cfg)  # latents scaled for another VAE, labels past num_classes
    check_resume_matches_strategy(cfg, world_size)
    if ((cfg.get('strategy') or {}).get('type') == 'DeepSpeedStrategy'
            and cfg.get('load_from') and not cfg.get('resume')):
        # mmengine's DeepSpeedStrategy reads every checkpoint with DeepSpeed's folder
        # loader (an AssertionError for a file)
        raise UserError(f'--load-from {cfg.load_from} with --deepspeed: mmengine loads '
                        'only DeepSpeed checkpoint folders there; start from these '
                        f'weights with --cfg-options model.pretrained_denoiser='
                        f'{cfg.load_from} instead')
    note_small_train_set(cfg, world_size)  # a global batch of copies of a few samples
    if run_checkpoint is not None:  # (not before a refusal: it said the run would start)
        note_load_from_run(args, run_checkpoint)
    if (cfg.get('resume') and isinstance(cfg.get('load_from'), str)
            and osp.isfile(cfg.load_from) and not args.deepspeed):
        # (on the final config: the one the Runner dumps, as the checkpoint's run did)
        note_resumed_config_changes(
            cfg, cfg.load_from, load_from_kind(cfg.load_from)[2],
            '--resume' if args.resume is not None else 'resume = True, load_from')
    if not torch.cuda.is_available():
        cfg.env_cfg = cfg.get('env_cfg') or {}  # (mmengine's default: none given)
        cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            if (cfg.get(key) or {}).get('pin_memory'):  # a GPU recipe: nothing to pin
                cfg[key]['pin_memory'] = False  # for, and torch warns about it
        if args.launcher != 'none':
            # mmengine gives DDP device_ids=[LOCAL_RANK] even for CPU modules, which
            # DDP rejects; CPU DDP needs device_ids=None.
            wrapper = cfg.get('model_wrapper_cfg') or dict(
                type='MMDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
            wrapper['device_ids'] = None
            cfg.model_wrapper_cfg = wrapper
    return cfg


# What a write meets on a full disk, over a quota, on a file system mounted read-only, or
# at the file-size limit (EFBIG: ulimit -f, or the file system's largest file): no room,
# at the run's start-up as during its training (graceful_stop.no_room_fix: what to do).
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def collective_timeout(cfg) -> dict:
    """``timeout_s`` for init_cpu_distributed: the config's env_cfg.dist_cfg.timeout
    (seconds), which mmengine gives NCCL; a gloo run (no CUDA) waited a fixed 30
    minutes whatever it said. Nothing when the config sets none."""
    timeout = ((cfg.get('env_cfg') or {}).get('dist_cfg') or {}).get('timeout')
    if timeout is None:
        return {}
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise UserError(f'env_cfg.dist_cfg.timeout must be a number of seconds > 0, got '
                        f'{timeout!r}')
    return dict(timeout_s=timeout)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    from mmsora.engine import CheckpointWriteError, init_cpu_distributed
    from mmsora.engine.graceful_stop import (interrupted_at, no_room_fix, stop_gracefully,
                                             stopped_by_error, stopped_by_full_disk)
    from mmsora.engine.load_from_checks import start_up_reads
    from mmsora.engine.log_files import guarded_log_files
    from mmsora.engine.resume_checks import check_resume_layout, resumes_a_complete_run
    from mmsora.engine.work_dir import (check_work_dir_is_new, drop_log_dir_left_empty,
                                        keep_dumped_config)
    # (a mistake here is said by the first process of each machine: run_cli)
    # each of torchrun's processes trained the whole run alone, into the same work dir
    check_torchrun_launcher(args.launcher)
    # (each process past the machine's GPUs stopped in mmengine's set_device)
    from mmsora.utils.dist import NO_GPU_IN_VIEW, check_gpu_per_process
    check_gpu_per_process(NO_GPU_IN_VIEW, args.launcher)
    with start_up_reads():  # (each checkpoint read once by the checks below)
        cfg = build_train_config(args)
        check_stores_exist(cfg)
        check_work_dir_is_new(cfg, args)  # a forgotten --resume
        from mmsora.engine.strategies import launcher_world_size
        check_resume_layout(cfg, launcher_world_size(args.launcher))
        complete = resumes_a_complete_run(cfg)
    timeout = collective_timeout(cfg)
    # mmengine's launcher calls torch.cuda.set_device even without CUDA: start
    # gloo ourselves there, and mmengine then leaves the process group alone.
    init_cpu_distributed(args.launcher, **timeout)
    from mmsora.engine.strategies import (prepare_deepspeed, seed_model_at_run_time,
                                          set_tf32, single_process_env, tf32_supported)
    set_tf32(tf32_supported() and not args.no_tf32)
    malloc_kept = keep_freed_memory_on_cpu(args, not torch.cuda.is_available())
    if prepare_deepspeed(cfg):  # installed; mmengine mended
        for key, value in single_process_env(cfg).items():  # one-process run
            os.environ.setdefault(key, value)
    put_back_config = keep_dumped_config(cfg)  # (the Runner dumps its own)
    existed = set(os.listdir(cfg.work_dir)) if osp.isdir(cfg.work_dir) else set()
    try:  # (a log file on a full disk: one line, not a traceback per record: log_files.py)
        with guarded_log_files():
            if cfg.get('runner_type') == 'FlexibleRunner':  # --deepspeed / --fsdp
                from mmengine.runner import FlexibleRunner
                runner = FlexibleRunner.from_cfg(cfg)
                seed_model_at_run_time(runner)  # it builds the model later, on every process
            else:
                runner = Runner.from_cfg(cfg)
    except OSError as e:
        if e.errno not in FULL_DISK:
            raise
        # (a 190-line traceback from the config's dump, and a 0-byte dumped config
        # that tools/infer.py WORK_DIR then read)
        put_back_config()
        # (EFBIG: another --work-dir has the same file-size limit; with none set, the
        # fix is a --work-dir on another file system already)
        fix = no_room_fix(e.errno)
        raise RunError(f'{e.filename or cfg.work_dir}: {e.strerror}, at the run\'s start-up '
                       f'(its config and logs go to {cfg.work_dir}): {fix}'
                       + ('' if e.errno == errno.EFBIG else ', or give another --work-dir')
                       ) from None
    if malloc_kept:
        runner.logger.info('No GPU: glibc malloc keeps freed memory for the next step '
                           '(--default-malloc leaves it as it is)')
    # Ctrl-C (one process) and SIGTERM (a scheduler's time limit or preemption) stop
    # after the iteration under way, with a checkpoint to resume from
    restore = stop_gracefully(runner, ctrl_c=args.launcher == 'none')
    try:
        with guarded_log_files():  # (a scalars file's failed write names the file)
            runner.train()
    except Interrupted:
        raise
    except KeyboardInterrupt:  # Ctrl-C: one line saying where to continue from
        loop = getattr(runner, '_train_loop', None)  # (runner.iter would build it)
        raise Interrupted(interrupted_at(runner, getattr(loop, 'iter', 0))) from None
    except Exception as e:  # a crash (another process killed, out of memory, a bad
        # file): its traceback ends with where the run stands, as Ctrl-C's line does
        # a full disk (mmengine's scalars files, written every logged iteration; a
        # checkpoint's save): one line, the file, what to do; EFBIG (a file-size limit)
        # is no room either, with its own advice
        failed = e.error if isinstance(e, CheckpointWriteError) else e
        if isinstance(failed, OSError) and failed.errno in FULL_DISK:
            raise RunError(stopped_by_full_disk(runner, e)) from e
        where = stopped_by_error(runner)
        if where:
            add_note(e, where)
        raise
    finally:
        restore()
        if getattr(sys.exc_info()[1], 'exit_code', None) == 143:  # stopped by SIGTERM:
            # the process is to end; a SIGTERM more (a launcher's, passed on) must not
            # stop it before it has said where the run stands (first: run_cli's handler,
            # put back by restore, would break off putting back the config)
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sys.exc_info()[1] is not None:  # stopped: one that had not resumed yet
            put_back_config(runner)  # leaves the earlier run's dumped config
    if complete:  # nothing trained: no log folder of start-up output alone
        drop_log_dir_left_empty(runner, existed)
    from mmsora.utils.dist import close_process_group, release_engine
    release_engine(runner)
    del runner
    close_process_group()


if __name__ == '__main__':
    sys.exit(run_cli(main))
