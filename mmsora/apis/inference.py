"""Python API behind tools/infer.py: load a trained model, sample, save pictures."""
import glob
import inspect
import math
import os
import os.path as osp
import re
from collections.abc import Iterable
from typing import Optional, Sequence

import numpy as np
import torch

from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.checkpoint_choice import (last_checkpoint, newest_numbered_checkpoint,
                                            resolve_checkpoint)
from mmsora.utils.cli import UserPathNotFound, note
from mmsora.utils.labels import check_label_range
from mmsora.utils.weight_loading import extract_state_dict, load_state_dict_checked

__all__ = ['find_run', 'init_model', 'load_weights', 'denoiser_state_dict', 'ema_kept',
           'read_prompt_file', 'default_precision', 'sample_images', 'save_image_grid',
           'check_label_ids', 'run_sample_settings', 'sample_arguments',
           'check_run_sample_settings', 'check_makes_pictures']


def check_label_ids(labels, num_classes: Optional[int]) -> None:
    """Refuse class ids a model of ``num_classes`` classes has no row for, in one line
    naming the option (tools/infer.py's and text2video's ``--labels``); None: the
    model's classes unknown, whole numbers of any value."""
    check_label_range(labels, num_classes, '--labels')


def check_makes_pictures(vae, latent_shape) -> None:
    """Refuse a model whose samples no tool can save or score: latents of other than 3
    channels (``latent_shape[0]``) and no VAE (``vae`` None: ``model.vae`` unset or
    None) to decode them into pictures. tools/infer.py sampled them all and only then
    failed at the save, tools/test.py at its first batch, the weights loaded first:
    they call this from the config (its ``model.vae`` and ``model.latent_shape``)
    before. (``sample_images`` gives such a model's latents in Python.)

    Raises:
        mmsora.utils.cli.UserError: one line naming the keys that set the VAE.
    """
    from mmsora.utils.cli import UserError
    if vae is not None or not isinstance(latent_shape, (list, tuple)):
        return  # (a shape that is no sequence: the model's build says so)
    shape = list(latent_shape)
    if not shape or shape[0] == 3:
        return
    raise UserError(f'model.latent_shape {shape} holds {shape[0]}-channel latents and the '
                    'model has no VAE (model.vae) to decode them into pictures: give one, '
                    '--cfg-options model.vae.type=AutoencoderKLWrapper '
                    'model.vae.pretrained_path=DIR (a local diffusers VAE folder)')


def find_run(path):
    """Resolve a config file or a work dir into ``(config_path, checkpoint_or_None)``.

    A work dir written by tools/train.py holds the dumped config and a
    ``last_checkpoint`` file naming the newest checkpoint (a file, or a DeepSpeed
    checkpoint folder); without that file, its highest-numbered ``iter_N.pth`` is
    taken (:func:`~mmsora.utils.checkpoint_choice.last_checkpoint`). A checkpoint file in a
    work dir is that run at that checkpoint (``work_dirs/run/iter_300.pth``: it was
    read as a config, 'not a .py'). ``path``: a str or a ``pathlib.Path``.

    Raises:
        UserPathNotFound: (a FileNotFoundError) no such file or folder, or one that is
            not a config or a work dir; said once per machine under a launcher.
    """
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    path = os.fspath(path)  # (a pathlib.Path had no endswith)
    if osp.isfile(path):
        if not path.endswith(CHECKPOINT_SUFFIXES):
            return path, None
        folder = osp.dirname(path) or '.'
        configs = _dumped_configs(folder)
        # a work dir of tools/train.py (never another .py beside a released file:
        # setup.py beside DiT-XL-2-256x256.pt was run as the config)
        if len(configs) == 1 and (osp.isfile(osp.join(folder, 'last_checkpoint')) or
                                  re.fullmatch(r'iter_\d+\.pth', osp.basename(path))):
            return configs[0], path
        raise UserPathNotFound(f'{path} is a checkpoint, not a config or a work dir of '
                                'tools/train.py: give the config file, and the checkpoint '
                                'as --checkpoint (checkpoint= in Python)')
    if not osp.isdir(path):
        from mmsora.utils.checkpoint_choice import stopped_replace_hint
        raise UserPathNotFound(f'no such config file or work dir: {path}'
                               f'{stopped_replace_hint(path)}')
    if is_zero_checkpoint(path):
        raise UserPathNotFound(f'{path} is a DeepSpeed checkpoint folder: give its work '
                                'dir (or the config file and --checkpoint FOLDER)')
    configs = _dumped_configs(path)
    if len(configs) != 1:
        raise UserPathNotFound(
            f'work dir {path} should hold exactly one dumped config (*.py), found '
            f'{len(configs)}; pass the config file and --checkpoint instead')
    return configs[0], last_checkpoint(path)


CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.ckpt', '.safetensors', '.bin')


def _dumped_configs(folder):
    """The configs a work dir holds (DeepSpeed copies its conversion scripts there)."""
    return sorted(c for c in glob.glob(osp.join(folder, '*.py'))
                  if osp.basename(c) not in ('zero_to_fp32.py', 'zero_to_torch.py'))


def load_weights(model, checkpoint, use_ema=True,
                 trained_option: Optional[str] = 'use_ema=False'):
    """Load a checkpoint into a LatentDiffusion model.

    Accepts mmengine checkpoints (EMA weights in ``state_dict`` when EMAHook ran;
    ``use_ema=False`` takes the raw weights from ``ema_state_dict``), DeepSpeed
    checkpoint folders of ``--deepspeed`` runs (read as ``tools/zero_to_state_dict.py``
    converts them; the EMA weights from the client state alone; under torchrun process
    0 reads the folder and sends the weights to the others: every process of the
    group must call this with the same folder), original DiT /
    fast-DiT checkpoints (a denoiser state dict, EMA preferred) and diffusers DiT
    folders (``facebook/DiT-XL-2-256``: :mod:`mmsora.utils.diffusers_dit`), loaded into
    ``model.denoiser`` with ``strict=True``. The file or folder read is kept in
    ``model.loaded_from``.

    EMA weights that by the run's record still hold most of their initial weights (a
    short run: :mod:`mmsora.apis.young_ema`) are taken, and warned about in a line that
    names ``trained_option``, how the caller takes the trained weights instead (None:
    it has no way).
    """
    from mmsora.utils.diffusers_dit import diffusers_dit_folder
    from mmsora.utils.zero_checkpoint import read_zero_checkpoint
    checkpoint = os.fspath(checkpoint)  # (a pathlib.Path too; a str in loaded_from)
    if not hasattr(model, 'denoiser'):  # (an AttributeError after the file was read)
        raise TypeError(f'load_weights loads into a LatentDiffusion (init_model\'s model), '
                        f'not a {type(model).__name__}; a bare DiT loads a checkpoint with '
                        'mmsora.utils.weight_loading.load_dit_checkpoint')
    diffusers_folder = diffusers_dit_folder(checkpoint) is not None  # (read as a file)
    if osp.isdir(checkpoint):  # a work dir: its newest checkpoint; another folder named
        checkpoint = resolve_checkpoint(checkpoint)
    model.loaded_from = checkpoint  # what the tools report as the weights sampled
    # (and which: set from the file where it is read; a process that is sent them)
    model.loaded_weights = 'EMA weights' if use_ema else 'trained weights'
    if osp.isdir(checkpoint) and not diffusers_folder:
        from mmengine.dist import get_dist_info
        if get_dist_info()[1] > 1:
            return _load_zero_on_rank0(model, checkpoint, use_ema, trained_option)
        obj = read_zero_checkpoint(checkpoint, trained=not use_ema)
    else:
        obj = load_checkpoint_file(checkpoint)
    return _load_denoiser(model, obj, use_ema, source=checkpoint,
                          trained_option=trained_option)


def _load_zero_on_rank0(model, folder: str, use_ema: bool,
                        trained_option: Optional[str] = 'use_ema=False'):
    """Under torchrun (tools/test.py): process 0 reads a DeepSpeed folder, gathering
    every partition for the trained weights, and sends the denoiser's weights to the
    others, instead of every process reading and converting the whole folder. A
    collective: every process of the group loads the same folder; the others wait
    for process 0 within the group's timeout (30 min, ``init_sampling_processes``)."""
    from mmengine.dist import broadcast, broadcast_object_list, get_dist_info
    from mmsora.utils.zero_checkpoint import read_zero_checkpoint
    error, failure = None, [None]
    if get_dist_info()[0] == 0:
        try:
            _load_denoiser(model, read_zero_checkpoint(folder, trained=not use_ema),
                           use_ema, source=folder, trained_option=trained_option)
        except Exception as e:  # tell the others before they wait for the weights
            error, failure = e, [f'{type(e).__name__}: {e}']
    broadcast_object_list(failure, src=0)
    if error is not None:
        raise error
    if failure[0] is not None:
        raise RuntimeError(f'process 0 could not read {folder}: {failure[0]}')
    for value in model.denoiser.state_dict().values():
        broadcast(value, src=0)
    return model


def _load_denoiser(model, obj, use_ema: bool, source: str = 'the checkpoint',
                   trained_option: Optional[str] = 'use_ema=False'):
    """Load a checkpoint's object (see :func:`load_weights`) into ``model.denoiser``;
    weights of another model are named in one line (``source``: the file). Which
    weights they are is kept in ``model.loaded_weights`` (:func:`weights_taken`); EMA
    weights still mostly initial are warned about (``trained_option``: the caller's way
    to the trained ones)."""
    from mmsora.apis.young_ema import young_ema_warning
    load_state_dict_checked(model.denoiser, denoiser_state_dict(obj, use_ema, source),
                            source, objective=getattr(model, 'diffusion', None))
    model.loaded_weights = weights_taken(obj, use_ema, source)
    if model.loaded_weights == 'EMA weights':  # (a short run's: they sample noise)
        line = young_ema_warning(obj, source, trained_option)
        if line is not None:
            _warn(line)
    return model


def weights_taken(obj, use_ema: bool, source: str = '') -> str:
    """Which weights :func:`denoiser_state_dict` takes from a loaded checkpoint, in
    words: the EMA or the trained ones, or the one set of a file that does not say (a
    plain state dict: a released DiT file, a diffusers folder, an export). The tools
    said 'EMA weights where it has them' whatever they had read."""
    kept = ema_kept(obj, source)
    return ('one set of weights, EMA or not: the file does not say' if kept is None
            else 'EMA weights' if use_ema and kept else 'trained weights')


def denoiser_state_dict(obj, use_ema: bool = True, source: str = 'the checkpoint') -> dict:
    """The denoiser's weights in a loaded checkpoint (see :func:`load_weights`), with
    the denoiser's own names (DiT's, for a DiT): the EMA weights where the run kept
    them, else (``use_ema=False``, or a run without EMA, which is warned about) the
    trained ones.

    A run checkpoint without EMA weights (a run without EMAHook) gave its trained
    weights for the EMA ones without a word before (tools/infer.py said '(EMA weights
    where it has them)', tools/export_denoiser.py 'the denoiser's EMA ... weights')."""
    if use_ema and ema_kept(obj, source) is False:
        _warn(f'{source} holds no EMA weights (the run kept none: no EMAHook): taking '
              'the trained weights')
    if isinstance(obj, dict) and 'state_dict' in obj:
        if use_ema or 'ema_state_dict' not in obj:
            state = obj['state_dict']
        else:  # EMAHook swaps: the raw weights sit in ema_state_dict as 'module.*'
            state = {k[len('module.'):]: v for k, v in obj['ema_state_dict'].items()
                     if k.startswith('module.')}
        denoiser_state = {k[len('denoiser.'):]: v for k, v in state.items()
                          if k.startswith('denoiser.')}
    elif isinstance(obj, dict) and ('ema' in obj or 'model' in obj):  # DiT / fast-DiT
        denoiser_state = extract_state_dict(
            obj, key='ema' if use_ema and 'ema' in obj else 'model')
    else:  # the weights themselves (the released DiT-XL-2-256x256.pt: EMA weights)
        denoiser_state = extract_state_dict(obj, key=None)
        if not use_ema:  # nothing else to take: say so rather than sample them silently
            _warn(f'--no-ema: {source} is a plain state dict, one set of weights (the '
                  'released DiT files hold the EMA ones): taking those')
    return denoiser_state


def ema_kept(obj, source: str = '') -> Optional[bool]:
    """Whether a loaded checkpoint (see :func:`load_weights`) holds EMA weights: a
    run's (mmengine's, with its ``meta``), its ``ema_state_dict`` (EMAHook's); a DiT /
    fast-DiT one, its ``'ema'``; None where the file does not say (a plain state dict,
    or ``{'state_dict': ...}`` alone, not a run's). A DeepSpeed folder (``source``)
    is read by :func:`~mmsora.utils.zero_checkpoint.read_zero_checkpoint`, whose
    ``ema_state_dict`` says it, read for its EMA alone too (its client state was read
    again here, and for :func:`~mmsora.apis.young_ema.ema_updates`)."""
    if not isinstance(obj, dict):
        return None
    if 'state_dict' in obj:
        if 'meta' not in obj:
            return None
        if 'ema_state_dict' in obj:
            return True
        if osp.isdir(source):  # (read_zero_checkpoint's: with the EMA's entry where
            return False       # the run kept one, in both of its modes)
        text = (obj.get('meta') or {}).get('cfg')
        if not isinstance(text, str) or 'EMAHook' in text:
            # a run with an EMA hook whose checkpoint was published without
            # ema_state_dict (CheckpointHook's published_keys): its state_dict holds
            # the EMA weights (the hook swaps them in), or cannot be told
            return None
        return False
    if 'ema' in obj or 'model' in obj:
        return 'ema' in obj
    return None


def _warn(text: str) -> None:
    """``warning: TEXT`` on standard error, from process 0 alone."""
    from mmengine.dist import get_rank
    if get_rank() == 0:  # (one write: the processes of a launch share the stream)
        from mmsora.utils.cli import say
        say(f'warning: {text}')


def init_model(config, checkpoint=None, device='cpu', cfg_options=(), use_ema=True,
               checkpoint_option: str = 'checkpoint=',
               trained_option: Optional[str] = 'use_ema=False'):
    """Build the model of a config (or a work dir of tools/train.py) and load its
    weights: the Python way into what ``tools/infer.py`` samples.

    Args:
        config: A work dir (its dumped config and newest checkpoint), or a config file
            (paths here: a str or a ``pathlib.Path``).
        checkpoint: A checkpoint file or DeepSpeed folder, a DiT / fast-DiT file or a
            diffusers DiT folder (:func:`load_weights`); default: the work dir's
            newest, else (a config file) the pretrained weights the config names
            (``model.pretrained_denoiser``, a Stable Cascade prior's
            ``pretrained_path``). ``False``: no weights (a model built from the
            config, random).
        device: Where the model goes (``'cuda'``, ``'cpu'``).
        cfg_options: Overrides, as ``--cfg-options`` takes them (``['a.b=1']``) or as
            a dict (``{'a.b': 1}``).
        use_ema: The EMA weights where the checkpoint has both.
        checkpoint_option: How the calling tool takes a checkpoint (its errors).
        trained_option: How the calling tool takes the trained weights instead of
            the EMA ones (``use_ema=False`` by default; tools/infer.py's and
            tools/test.py's ``--no-ema``), named by the warning on a short run's EMA
            (:func:`load_weights`); None: it has no way.

    Returns:
        ``(model, cfg)``: the model in eval mode on ``device``, its run's
        ``sample_cfg`` in ``model.sample_cfg`` (:func:`sample_images` samples with
        it), and the config.

    Raises:
        mmsora.utils.cli.UserError: A mistake in the config or the overrides (an
            unknown key or type), in one line as the tools say it.
        FileNotFoundError: No config, checkpoint or VAE folder where named, or no
            config.json or no weights file in the VAE's.
        ValueError: A VAE folder of another model, or of other latent channels.
    """
    import mmsora.models  # noqa: F401  (registers the modules)
    from mmsora.registry import MODELS
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.cli import UserError
    from mmsora.utils.config_loading import load_config
    from mmsora.utils.error_messages import explain_error
    if torch.device(device).type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f'device={device!r}: no CUDA device on this machine')
    config = os.fspath(config)  # (a pathlib.Path: find_run said it had no endswith)
    if isinstance(checkpoint, os.PathLike):
        checkpoint = os.fspath(checkpoint)
    config_path, run_checkpoint = find_run(config)
    cfg = load_config(config_path)
    apply_cfg_options(cfg, cfg_options)
    if checkpoint is not False:
        _check_model_folders(cfg.model)
    from mmengine.registry import init_default_scope
    init_default_scope('mmsora')
    try:
        model = MODELS.build(cfg.model)
    except (TypeError, KeyError) as e:  # an unknown key or type in one line, as the
        line = explain_error(e)           # tools say it (ValueErrors are one already)
        if line is None:
            raise
        raise UserError(line) from e
    if checkpoint is not False:
        _check_vae_folder(model)
    model.sample_cfg = dict(cfg.get('sample_cfg') or {})
    pretrained = config_pretrained_weights(model)
    if checkpoint is not False:
        checkpoint = checkpoint or run_checkpoint
    if not checkpoint:
        # no checkpoint given for a config file: the config's model, with the
        # pretrained weights it names loaded as training starts from them (a Stable
        # Cascade prior not trained in time yet: the image model frame by frame); it
        # stopped. (A work dir without checkpoints, or its dumped .py, is refused: its
        # run's weights are what it means.)
        if pretrained and checkpoint is None and not _in_a_work_dir(config_path):
            # (without a log file mmengine logs a block per parameter, 'The value is the
            # same before and after calling init_weights': 236 of them for DiT-XL/2)
            model._dump_init_info = lambda: None
            try:
                model.init_weights()
            finally:
                del model._dump_init_info
            model.loaded_from = pretrained
            model.loaded_weights = "the config's pretrained weights, no checkpoint"
            return model.to(device).eval(), cfg
        if checkpoint is False:
            return model.to(device).eval(), cfg
        random = (" (checkpoint=False: the config's model with random weights)"
                  if checkpoint_option == 'checkpoint=' else '')
        # a config trained with tools/train.py's default work dir: its run named (the
        # config alone was refused without a word of where the weights were)
        run = osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])
        trained = (f'; its run {run} holds {osp.basename(newest)}: give the run '
                   f'({run}) instead of the config' if not _in_a_work_dir(config_path)
                   and (newest := newest_numbered_checkpoint(run)) else '')
        raise FileNotFoundError(f'no checkpoint given and none found for {config}: '
                                f'pass {checkpoint_option}{random}{trained}')
    load_weights(model, checkpoint, use_ema=use_ema, trained_option=trained_option)
    return model.to(device).eval(), cfg


def _check_model_folders(model_cfg) -> None:
    """Name every folder the config's VAE and text encoder load from that does not
    exist, with its ``--cfg-options`` key, in one line.

    The decoder and the encoder load on first use, after the model is built (Stable
    Cascade lite: 30 s and 5.7 GB) or the sampling has begun: a wrong folder is named
    now, from the config. The text encoder's was named only after the VAE's was
    fixed, without its key: a second failed run.
    """
    missing = []
    for key, default in (('vae', 'VAE'), ('text_encoder', 'text encoder')):
        part = model_cfg.get(key) or {}
        folder = part.get('pretrained_path') if hasattr(part, 'get') else None
        if isinstance(folder, str) and not osp.isdir(folder):
            name = (str(part['type']).rpartition('.')[2] if key == 'vae' and 'type' in part
                    else default)
            missing.append((f'{name} folder {folder!r}', f'model.{key}.pretrained_path=DIR'))
    if len(missing) == 1:
        (folder, key), = missing
        raise FileNotFoundError(f'{folder} does not exist (give a local folder: '
                                f'--cfg-options {key}; nothing is downloaded)')
    if missing:
        raise FileNotFoundError(
            f'{missing[0][0]} does not exist, nor does {missing[1][0]} (give local '
            f'folders: --cfg-options {missing[0][1]} {missing[1][1]}; nothing is '
            'downloaded)')


def _check_vae_folder(model) -> None:
    """Refuse, from its config.json and its file names, a VAE folder
    (``model.vae.pretrained_path``) that holds no diffusers VAE of the wrapper's class,
    no weights beside its config.json, or a VAE whose latents have other channels than
    the model's (``model.latent_shape[0]``, the denoiser's ``in_channels``; a video
    VAE's config states them as Wan's ``z_dim`` or ``latent_channels``): the VAE loads
    only to decode, after every sampling step (250 by default: minutes to hours for an
    XL model), and a 4-channel model's latents fed to an 8-channel VAE gave a 57-line
    convolution traceback. The folder is judged by the VAE's own ``check_folder``
    (tools/train.py's check before a run; the Stable Cascade decoder's Stage B and A and
    their weights), an ``AutoencoderKLWrapper``'s as before sampling
    (``sampling=True``: a folder without config.json refused, no note of its scale)."""
    from mmsora.models.vaes.autoencoder_kl import AutoencoderKLWrapper, vae_folder
    from mmsora.utils.checkpoint import read_json_config
    vae = getattr(model, 'vae', None)
    if not callable(getattr(vae, 'check_folder', None)):
        return
    if not isinstance(vae, AutoencoderKLWrapper):
        vae.check_folder()  # (one line naming its model.vae keys; a folder not there
        return              # is left to its load, _check_model_folders named it)
    vae.check_folder(sampling=True)  # (a folder not there: _check_model_folders named it)
    if not vae.pretrained_path or not osp.isdir(vae.pretrained_path):
        return
    folder = vae_folder(vae.pretrained_path, vae.subfolder)
    config = read_json_config(osp.join(folder, 'config.json')) or {}
    found, wanted = vae.config_latent_channels(config), model.latent_shape[0]
    if found is not None and found != wanted:
        raise ValueError(f'VAE folder {folder!r} makes {found}-channel latents (its '
                         f'config.json) but the model\'s have {wanted} (model.latent_shape'
                         '[0]): give the VAE the model was trained with (--cfg-options '
                         'model.vae.pretrained_path=DIR)')


def _in_a_work_dir(config_path: str) -> bool:
    """Whether a config file is a run's dumped one (checkpoints beside it)."""
    folder = osp.dirname(osp.abspath(config_path))
    return osp.isfile(osp.join(folder, 'last_checkpoint')) or bool(
        glob.glob(osp.join(folder, 'iter_*.pth')))


def config_pretrained_weights(model) -> Optional[str]:
    """The pretrained weights a model's config names (``model.pretrained_denoiser``,
    or the denoiser's ``pretrained_path``: a Stable Cascade prior), which its
    ``init_weights`` loads, or None."""
    return getattr(model, 'pretrained_denoiser', None) or getattr(
        getattr(model, 'denoiser', None), 'pretrained_path', None) or None


def set_output_size(model, num_frames: Optional[int] = None,
                    resolution: Optional[Sequence[int]] = None):
    """Set the frames and pixel size a model samples (its ``latent_shape``).

    The latent follows the output: ``resolution`` (H, W) divided by the VAE's spatial
    factor (1 without a VAE), ``num_frames`` through the VAE's temporal compression
    (video VAEs: T -> (T - 1) / 4 + 1). Transformer denoisers have a fixed token grid
    (their position table), so their resolution is the one they were trained at;
    VideoDiT takes at most its ``num_frames``. Convolutional ones (StableCascadeVideo)
    take any size from the smallest latent their UNets (Stage C's, and the decoder's
    Stage B) down-sample: the largest ``smallest_latent_side`` of the denoiser and the
    VAE (1 for a part without one).

    Raises:
        ValueError: naming the size the model can make instead.
    """
    shape = list(model.latent_shape)
    video = len(shape) == 4
    if num_frames is not None and not video:
        raise ValueError('this model makes pictures (model.latent_shape has no frame axis); '
                         'frames are for video models')
    vae = model.vae
    f = vae.downsample_factor if vae is not None else 1
    if resolution is not None:
        h, w = resolution
        if hasattr(vae, 'latent_size'):  # the VAE's own rounding (Stable Cascade: 42.67)
            shape[-2:] = list(vae.latent_size(h, w))
            least = max(getattr(part, 'smallest_latent_side', 1)
                        for part in (model.denoiser, vae))
            if min(shape[-2:]) < least:  # (a convolution's traceback after sampling)
                size = math.floor((least - 1) * f) + 1  # (latent_size rounds up)
                raise ValueError(
                    f'{h}x{w} pixels is a {shape[-2]}x{shape[-1]} latent, below this '
                    f"model's smallest, {least}x{least} (its UNets down-sample it): give "
                    f'at least {size}x{size}')
            made = tuple(vae.decoded_size(h, w)) if hasattr(vae, 'decoded_size') else (h, w)
            if made != (h, w):  # (the size came out otherwise without a word)
                note(f'resolution {h}x{w} makes {made[0]}x{made[1]} frames (the nearest '
                     'the Stable Cascade latent grid decodes to)')
        elif h % f or w % f:
            raise ValueError(f'resolution {h}x{w} is not a multiple of the VAE factor {f}')
        else:
            shape[-2:] = [h // f, w // f]
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f'num_frames must be >= 1, got {num_frames}')
        if hasattr(vae, 'latent_shape') and callable(vae.latent_shape):  # video VAE
            vae.check_num_frames(num_frames)  # else fewer frames come out than asked
            num_frames = vae.latent_shape(num_frames, shape[-2] * int(f), shape[-1] * int(f))[1]
        shape[1] = num_frames
    denoiser = model.denoiser
    most = getattr(denoiser, 'num_frames', None)
    if video and most is not None and shape[1] > most:
        raise ValueError(f'{shape[1]} latent frames but the denoiser has a table for at most '
                         f'{most} (model.denoiser.num_frames); train for longer clips')
    trained = model.latent_shape[1] if video else None
    if video and most is None and shape[1] > trained:
        # no table to refuse it (Stable Cascade's sinusoidal frame positions): allowed,
        # and said
        note(f'{shape[1]} latent frames, more than the {trained} the model was configured '
             'to train on (model.latent_shape): frames past those are extrapolated and may '
             'lose motion or coherence')
    embedder = getattr(denoiser, 'x_embedder', None)
    if embedder is not None and hasattr(embedder, 'img_size'):
        trained = tuple(embedder.img_size)
        if tuple(shape[-2:]) != trained:
            raise ValueError(
                f'this model makes {round(trained[0] * f)}x{round(trained[1] * f)} '
                'pictures/clips: its '
                'position table is fixed at the size it was trained for; train (or '
                'fine-tune) at the new size')
    model.latent_shape = tuple(shape)
    return model.latent_shape


def read_prompt_file(path) -> list:
    """The prompts of ``--prompt-file`` (tools/infer.py, tools/test.py), one a line:
    blank lines and lines starting with ``#`` skipped, surrounding spaces and a UTF-8
    byte order mark dropped (it began the first prompt). Raises UserError (one line)
    for a file that cannot be read or holds no prompt."""
    from mmsora.utils.cli import UserError, read_user_text
    path = os.fspath(path)
    try:
        text = read_user_text(path, '--prompt-file')
    except FileNotFoundError as e:
        raise UserError(f'--prompt-file: cannot read {path}: {e.strerror}') from None
    prompts = [ln.strip() for ln in text.splitlines()
               if ln.strip() and not ln.startswith('#')]
    if not prompts:
        raise UserError(f'--prompt-file {path!r} holds no prompt')
    return prompts


def sample_arguments(model) -> list:
    """The arguments ``model.sample`` names (not ``**kwargs``): the settings it takes
    itself, apart from the sampler's options."""
    return [name for name, p in inspect.signature(model.sample).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def run_sample_settings(model, sample_kwargs: dict, keep_unset: bool = False) -> dict:
    """``sample_kwargs`` over the run's ``sample_cfg`` (``model.sample_cfg``, which
    :func:`init_model` sets; a model without one: ``sample_kwargs`` merged alone), as
    tools/infer.py merges them (``merge_sample_cfg``): the sampler, then its options
    as a dict, then the settings as choices (None: the run's); another sampler drops
    the run's sampler options; the precision is :func:`default_precision` where
    neither says one. The one merge of :func:`sample_images` and ``mass_sample``.

    ``keep_unset`` (``mass_sample``'s record of a run, not what it samples with): a
    setting (not a sampler option) given as None that the run does not set stays
    None (the keys tools/infer.py's run records hold), and a model without
    ``sample_cfg`` (or a ``sample_fn`` in its place) gets ``sample_kwargs`` as they
    are. ``model``: None, or one without ``sample``, where a ``sample_fn`` samples."""
    from mmsora.diffusion.scheduler_sampling import (NOT_SAMPLE_ARGS, SAMPLE_SETTINGS,
                                                     merge_sample_cfg)
    run_cfg = getattr(model, 'sample_cfg', None)
    if keep_unset and run_cfg is None:
        return dict(sample_kwargs)
    if run_cfg is not None:  # (the run's fps is for saving; one given is refused)
        run_cfg = {k: v for k, v in run_cfg.items() if k not in NOT_SAMPLE_ARGS}
    # An option None leaves the run's too, but where None is one of its values (SiT's
    # last_step=None: no last step), which all as choices was dropped and SiT's 'Mean'
    # last step taken.
    own = (*SAMPLE_SETTINGS, *NOT_SAMPLE_ARGS,
           *(sample_arguments(model) if hasattr(model, 'sample') else ()))
    takes_none = getattr(getattr(model, 'diffusion', None), 'OPTIONS_TAKING_NONE', ())
    chosen = {k: v for k, v in sample_kwargs.items() if k in own and k != 'sampler'}
    options = {k: v for k, v in sample_kwargs.items()
               if k not in own and (v is not None or k in takes_none)}
    sampler = sample_kwargs.get('sampler')
    settings = merge_sample_cfg(run_cfg, None if sampler is None else dict(sampler=sampler),
                                options, **chosen)
    if run_cfg is not None and settings.get('precision') is None:
        # (a model of one's own may hold no weights: a StopIteration)
        weight = next(iter(getattr(model, 'parameters', tuple)()), None)
        device = weight.device if weight is not None else 'cpu'
        settings['precision'] = default_precision(device, run_cfg)
    if keep_unset:
        settings = dict({k: v for k, v in sample_kwargs.items() if v is None and k in own},
                        **settings)
    return settings


def check_run_sample_settings(model, settings: dict) -> None:
    """Judge the settings :func:`sample_images` and ``mass_sample`` sample with
    (:func:`run_sample_settings`' merge) before the first batch, and before
    ``mass_sample`` writes anything (a refused NaN left a record that refused the
    corrected rerun): against the model's objective (``check_sample_settings``: the
    sampler, its options and the steps, ``precision`` and ``cfg_scale``); a model
    without one (None where a ``sample_fn`` samples) its ``precision`` and
    ``cfg_scale`` alone, by ``LatentDiffusion.sample``'s rules (the names are its
    settings: ``precision='fp8'`` was handed on). A key the callers pass themselves
    (``scheduler_sampling.CALLER_PASSED``: ``progress``, ``seeds``, ...) is no setting:
    refused, as the config's check refuses it. Raises its one-line ValueError."""
    from mmsora.diffusion.scheduler_sampling import (check_not_caller_passed,
                                                     check_sample_settings,
                                                     sample_settings_of)
    diffusion = getattr(model, 'diffusion', None)
    own = sample_settings_of(model.sample) if hasattr(model, 'sample') else []
    check_sample_settings(diffusion, settings, own)  # (None: precision and cfg_scale)
    check_not_caller_passed(settings)  # (seeds: a setting's name to the objective's check)


def default_precision(device, sample_cfg=None):
    """The sampling precision of tools/infer.py, tools/test.py and the text-to-video
    pictures when none is asked: the config's ``sample_cfg.precision``, else TF32 on a
    GPU (DiT's ``sample.py`` and ``sample_ddp.py`` allow it), on the CPU None (float32,
    where TF32 does not apply)."""
    return (sample_cfg or {}).get('precision') or (
        'tf32' if torch.device(device).type == 'cuda' else None)


def sample_images(model, labels: Optional[Sequence[int]] = None, seeds=0, batch_size=16,
                  progress=False, prompts=None, **sample_kwargs):
    """Sample in batches as ``tools/infer.py`` does; sample i depends only on its
    label (or prompt) and its seed, not on the batch it is drawn in.

    A model from :func:`init_model` samples with its run's ``sample_cfg`` (sampler,
    steps, guidance, the sampler's options, precision: ``model.sample_cfg``) under
    ``sample_kwargs``, and at infer's default precision (TF32 on a GPU) where neither
    says one: the same seeds give the samples ``tools/infer.py`` saves. Before, it
    sampled with the objective's defaults (DDPM, 250 steps, no guidance) unless every
    setting was passed.

    Args:
        model: A ``LatentDiffusion`` (in eval mode).
        labels: Class ids, one per sample (class-conditional models).
        seeds: One seed per sample, or an int ``s`` for ``s, s + 1, ...`` (infer's
            ``--seed s``).
        batch_size: Samples per call of the model.
        progress: A progress bar over each batch's steps.
        prompts: Captions, one per sample, or one caption (text models; ``labels``
            is then ignored).
        **sample_kwargs: :meth:`LatentDiffusion.sample`'s settings (``sampler``,
            ``num_steps``, ``cfg_scale``, ``precision``, ``decode``, the sampler's
            options such as ``eta``); a setting None leaves the run's, a sampler
            option None is passed on (SiT's ``last_step=None``). Another sampler than
            the run's drops the run's sampler options (``merge_sample_cfg``).

    Returns:
        Tensor: float32 on the CPU, ``(N, 3, H, W)`` pictures or ``(N, 3, T, H, W)``
        clips in [-1, 1] (latents for a model without a VAE, or ``decode=False``).

    Raises:
        ValueError: In one line, before the first batch: labels that are not a
            non-empty 1-D sequence of the model's class ids, prompts that are not a
            non-empty sequence of str (or one str), seeds that are not ints, a
            ``cfg_scale`` that is not a finite number, a ``precision`` not one of
            sampling's (a model without an objective too), a key passed by this
            function itself (a run's ``sample_cfg.progress``), and the sampler, its
            options and the steps as the model's objective refuses them.
    """
    from mmsora.models.latent_diffusion import prompt_list
    from mmsora.utils.sample_rng import seed_list
    settings = run_sample_settings(model, sample_kwargs)
    check_run_sample_settings(model, settings)  # before any batch
    text = getattr(model, 'text_conditioned', False)
    if text and prompts is None and labels is not None:  # (the model's own message
        raise ValueError('this model is text-conditioned: give the captions as '  # blamed
                         'prompts=[...], not labels')                              # the encoder)
    if prompts is not None:  # (one str: one caption; prompts=3 was 'int object is not
        prompts = prompt_list(prompts)  # iterable')
    elif labels is not None:  # all of them, before the first batch is drawn
        labels = _label_list(labels, getattr(model, 'num_classes', None))
    elif not text:
        raise ValueError('this model is class-conditional: give labels, one per sample')
    else:
        raise ValueError('this model is text-conditioned: give prompts, one per sample')
    given = prompts if prompts is not None else labels
    seeds = seed_list(seeds, len(given), 'prompts' if prompts is not None else 'labels')
    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    outs = []
    for start in range(0, len(seeds), batch_size):
        part = slice(start, start + batch_size)
        cond = (dict(prompts=prompts[part]) if prompts is not None
                else dict(labels=labels[part]))
        outs.append(model.sample(seeds=seeds[part], progress=progress, **cond,
                                 **settings).float().cpu())
    return torch.cat(outs)


def _label_list(labels, num_classes: Optional[int]) -> list:
    """:func:`sample_images`' ``labels`` as a list, refused in one line unless they are a
    non-empty 1-D sequence of class ids (:func:`check_label_range`'s rule where the
    model's classes are known): ``labels=3`` was 'int object is not iterable', ``[]``
    a torch.cat error, ``[[0, 1]]`` 'got 1 seeds for 2 samples'."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable) or \
            getattr(labels, 'ndim', 1) == 0:
        raise ValueError(f'labels must be a sequence of class ids, one per sample '
                         f'(labels=[3] for one sample of class 3), got {labels!r}')
    labels = labels.tolist() if torch.is_tensor(labels) else list(labels)
    try:
        shape = np.shape(labels)
    except ValueError:  # (rows of different lengths)
        shape = None
    if shape is None or len(shape) != 1:
        raise ValueError('labels must be one class id per sample (a 1-D sequence), got '
                         + (f'shape {shape}' if shape else repr(labels)))
    if not labels:
        raise ValueError('labels is empty: give one class id per sample')
    check_label_range(labels, num_classes, 'labels', error=ValueError)
    return labels


def to_uint8(images):
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8 (integer pixels refused)."""
    if images.dim() == 5 and images.shape[1] == 3:  # (it said: latent models need a VAE)
        raise ValueError(f'expected (N, 3, H, W) pictures, got clips of shape '
                         f'{tuple(images.shape)}: save them with save_videos')
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'expected (N, 3, H, W) pictures, got shape {tuple(images.shape)}; '
                         'latent models need a VAE (model.vae) to make pictures')
    from mmsora.apis.video import check_pixels_float
    check_pixels_float(images, 'pictures')
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).numpy()


def save_image_grid(images, path, nrow=8, upscale=1):
    """Save (N, 3, H, W) pictures in [-1, 1] as one grid picture (PNG, JPEG, ... by
    ``path``'s suffix), ``nrow`` a row, each ``upscale`` times larger (nearest).
    ``path``: a str or a ``pathlib.Path``; the str is returned."""
    from PIL import Image
    path = os.fspath(path)
    if osp.splitext(path)[1].lower() not in Image.registered_extensions():
        # (PIL's 'unknown file extension', after the folder was made)
        raise ValueError(f'save_image_grid writes a picture: give a .png or .jpg path, got '
                         f'{path!r}' + ('; clips go to save_videos'
                                         if str(path).lower().endswith('.mp4') else ''))
    pics = to_uint8(images)
    n, h, w, _ = pics.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = np.zeros((rows * (h + 2) + 2, ncol * (w + 2) + 2, 3), np.uint8)
    for i, pic in enumerate(pics):
        r, c = divmod(i, ncol)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = pic
    img = Image.fromarray(grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    img.save(path)
    return path
