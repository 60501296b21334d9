"""A run's work dir at tools/train.py's start and end.

The checkpoint ``--resume`` continues from, an earlier run's checkpoints that a new run
would overwrite, the config an earlier run dumped there (kept across a resume that
fails before its checkpoint is resumed), and the log folder a resume of a complete run
leaves with start-up output alone.
"""
import os
import os.path as osp

from mmsora.utils.checkpoint_choice import check_checkpoint_complete
from mmsora.utils.cli import UserError

def latest_checkpoint(work_dir):
    """The checkpoint ``--resume`` (without CKPT) continues from, or None to start
    afresh; fails early, naming it, if it is unusable. The work dir's own file comes
    first (mmengine's lookup took the absolute path in ``last_checkpoint``: a copied
    work dir resumed from the original's checkpoint)."""
    from mmsora.utils.checkpoint_choice import saved_checkpoint
    try:
        latest = saved_checkpoint(work_dir)
    except FileNotFoundError as e:
        named = getattr(e, 'earlier', None)  # (an earlier checkpoint to take, named)
        raise UserError(f'--resume: {e}' + ('' if named else '; pass --resume CKPT to pick '
                                                              'a checkpoint')) from None
    if latest is None:
        return None  # nothing saved yet: mmengine starts the run afresh
    from mmsora.engine.strategies import is_zero_checkpoint
    if is_zero_checkpoint(latest):
        return latest  # a DeepSpeed checkpoint folder (--deepspeed): DeepSpeed checks it
    check_checkpoint_complete(latest)
    return latest


def earlier_checkpoint(work_dir):
    """The newest checkpoint an earlier run left in ``work_dir`` (the one its
    ``last_checkpoint`` names, else the highest ``iter_N.pth`` / ``epoch_N.pth``, a
    file or a DeepSpeed folder), or None."""
    from mmsora.utils.checkpoint_choice import last_checkpoint, newest_numbered_checkpoint
    latest = last_checkpoint(work_dir)
    if latest is not None and osp.exists(latest) and osp.realpath(
            osp.dirname(osp.abspath(latest.rstrip('/')))) == osp.realpath(work_dir):
        return latest
    return newest_numbered_checkpoint(work_dir)  # (last_checkpoint names another's)


def checkpoint_dirs(cfg) -> list:
    """Where the run saves its checkpoints: the work dir, and where the checkpoint
    hook has an ``out_dir``, mmengine's ``OUT_DIR/WORK_DIR_NAME`` too."""
    dirs = [cfg.work_dir]
    out_dir = ((cfg.get('default_hooks') or {}).get('checkpoint') or {}).get('out_dir')
    if isinstance(out_dir, str):
        dirs.append(osp.join(out_dir, osp.basename(cfg.work_dir.rstrip(os.sep))))
    return dirs


def check_work_dir_is_new(cfg, args) -> None:
    """Refuse a new run (no ``--resume``: from scratch, or ``--load-from``) into a
    work dir that holds an earlier run's checkpoints (or its checkpoint hook's
    ``out_dir`` does). It started at iteration 0 without a word, overwrote the earlier
    ``iter_N.pth`` and ``last_checkpoint`` as it saved, and ``max_keep_ckpts`` pruned
    the older ones: a forgotten ``--resume`` lost the run. A work dir with logs or a
    dumped config alone (a run stopped before its first checkpoint) is taken. The
    files to remove are named one by one (a glob took other files along, e.g.
    tools/zero_to_state_dict.py's ``iter_N_state_dict.pth``); a ``--load-from`` of a
    checkpoint in that folder is told to use another work dir (removing the
    checkpoints would remove the weights it starts from). Called by tools/train.py's
    ``main``, not by its ``build_train_config``, which other code builds configs with."""
    if cfg.get('resume'):
        return
    import re
    import shlex
    for folder in checkpoint_dirs(cfg):
        newest = earlier_checkpoint(folder)
        if newest is not None:
            break
    else:
        return
    folder = folder.rstrip('/') or '/'
    name = osp.basename(newest.rstrip('/'))
    numbered = re.fullmatch(r'(iter|epoch)_(\d+)\.pth', name)
    at = (f', {"iteration" if numbered[1] == "iter" else "epoch"} {numbered[2]}'
          if numbered else '')
    where = (f'--work-dir {cfg.work_dir}' if args.work_dir else f'the work dir {cfg.work_dir}'
             ) + ('' if folder == cfg.work_dir.rstrip('/') else f' (its checkpoints: {folder})')
    earlier = (f'holds the checkpoints of an earlier run (newest: {newest}{at}), which a new '
               'run there would overwrite from iteration 0')
    if args.load_from and osp.realpath(osp.dirname(osp.abspath(
            args.load_from.rstrip('/')))) == osp.realpath(folder):
        raise UserError(f'--load-from {args.load_from} into {where}: it {earlier}, the file '
                        'given among them: start the new run in another --work-dir (or '
                        'continue that run with --resume)')
    # what to remove to start over: the marker and each numbered checkpoint (DeepSpeed's
    # are folders), or a file of another name that the marker names
    saved = sorted((n for n in os.listdir(folder)
                    if re.fullmatch(r'(iter|epoch)_\d+\.pth', n)),
                   key=lambda n: (n.split('_')[0], int(re.sub(r'\D', '', n))))
    files = ['last_checkpoint'] if osp.isfile(osp.join(folder, 'last_checkpoint')) else []
    files += saved + ([] if numbered else [name])
    remove = 'rm -r' if any(osp.isdir(osp.join(folder, n)) for n in saved) else 'rm'
    remove += ''.join(f' {shlex.quote(osp.join(folder, f))}' for f in files)
    start = f'--load-from {args.load_from} into {where}: it' if args.load_from else where
    raise UserError(f'{start} {earlier}: continue that run with --resume, start the new '
                    f'one in another --work-dir, or remove them to start over ({remove})')


def keep_dumped_config(cfg):
    """Keep the config an earlier run dumped into the work dir (``WORK_DIR/
    CONFIG_NAME.py``, which tools/infer.py WORK_DIR reads) across a ``--resume``
    that fails before the checkpoint is resumed (a checkpoint of another layout is
    refused only then): the Runner dumps this run's config when it is built, which
    overwrote the earlier run's. Returns a function to call when the run fails: it
    puts the earlier file back (or removes the one dumped, where there was none)
    unless the checkpoint was resumed; called without a runner (the Runner's
    start-up failed: a full disk cut its dump short), for every run."""
    if not cfg.filename:
        return lambda runner=None: None
    resume = bool(cfg.get('resume'))
    path = osp.join(cfg.work_dir, osp.basename(cfg.filename))  # (Runner.dump_config's)
    try:
        with open(path, 'rb') as f:
            earlier = f.read()
    except OSError:
        earlier = None

    def put_back(runner=None):
        from mmengine.dist import is_main_process
        if not is_main_process() or (runner is not None and (
                not resume or getattr(runner, '_has_loaded', True))):
            return  # a new run's own, or resumed: the config it goes on with is this run's
        try:
            if earlier is None:
                os.remove(path)
            else:
                with open(path, 'wb') as f:
                    f.write(earlier)
        except OSError:
            pass
    return put_back


def drop_log_dir_left_empty(runner, existed) -> None:
    """Remove the log folder (``WORK_DIR/TIMESTAMP``) of a resume of a complete run
    that wrote nothing but what every start writes (its log and ``vis_data/
    config.py``): each such ``--resume`` left one more folder of start-up output. A
    folder holding what the hooks' ends made (a final evaluation's scalars, samples)
    stays, as does one that was there before (``existed``: the work dir's entries
    before the Runner)."""
    from mmengine.dist import is_main_process
    log_dir = runner.log_dir
    if not is_main_process() or osp.basename(log_dir) in existed:
        return
    made = [osp.relpath(osp.join(folder, f), log_dir)
            for folder, _, files in os.walk(log_dir) for f in files]
    if any(path != osp.join('vis_data', 'config.py') and not (
            path.endswith('.log') and os.sep not in path) for path in made):
        return
    import logging
    import shutil
    for handler in list(runner.logger.handlers):  # (its log file is in the folder)
        if isinstance(handler, logging.FileHandler) and \
                handler.baseFilename.startswith(osp.abspath(log_dir) + os.sep):
            runner.logger.removeHandler(handler)
            handler.close()
    shutil.rmtree(log_dir, ignore_errors=True)
