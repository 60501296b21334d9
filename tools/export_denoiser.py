"""Write a run's denoiser weights alone, as DiT releases them.

    python tools/export_denoiser.py work_dirs/RUN --out DiT-XL-2-mine.pt
    python tools/export_denoiser.py work_dirs/RUN/iter_400000.pth --out dit.safetensors
    python tools/export_denoiser.py work_dirs/RUN --out raw.pt --no-ema
    python tools/export_denoiser.py work_dirs/RUN --diffusers --out DiT-mine/transformer
    python tools/export_denoiser.py work_dirs/RUN --pipeline --out DiT-mine

A training checkpoint holds the whole model (``denoiser.*``), the optimizer and the
hooks' states, with the EMA weights in ``state_dict`` and the trained ones in
``ema_state_dict`` (mmengine's EMA hook swaps them). The file written here is the
denoiser's state dict alone, with the denoiser's own parameter names: for a DiT the
names of DiT's ``models.py``, so DiT's ``sample.py --ckpt FILE`` (and
``tools/infer.py CONFIG --checkpoint FILE``, ``tools/train.py --load-from FILE``) read
it as they read the released ``DiT-XL-2-256x256.pt`` (raw EMA weights). ``.pt`` /
``.pth`` are written with ``torch.save``, ``.safetensors`` with safetensors. Reads
checkpoint files, DeepSpeed checkpoint folders and work dirs (their newest
checkpoint: the one ``last_checkpoint`` names, else the highest ``iter_N.pth``);
needs no config, no VAE and no GPU.

``--diffusers`` writes an image DiT as diffusers' ``DiTTransformer2DModel`` folder
(``config.json`` and ``diffusion_pytorch_model.safetensors``), which
``DiTTransformer2DModel.from_pretrained(OUT)`` and ``DiTPipeline`` read, as the hub's
``facebook/DiT-XL-2-256/transformer`` is laid out (:mod:`mmsora.utils.diffusers_dit`).

``--pipeline`` writes the whole ``DiTPipeline`` folder that
``DiTPipeline.from_pretrained(OUT)`` runs: ``model_index.json``, that ``transformer/``,
``vae/`` (the run's ``model.vae`` folder, a DiTPipeline folder's own ``vae/``, or
``--vae DIR``: a local diffusers AutoencoderKL, its ``scaling_factor`` the run's latent
scale) and ``scheduler/`` (a DDIMScheduler over the run's GaussianDiffusion steps and
betas: :func:`mmsora.utils.diffusers_dit.dit_scheduler`, its config without the
``timestep_spacing`` that schedulers swapped in with ``from_config`` would inherit);
``--class-names FILE`` (one line per class) gives the pipeline's ``id2label``. A run in
pixel space (no VAE) is refused: DiTPipeline decodes latents.
"""
import os
import os.path as osp
import sys

import torch

from mmsora.utils.atomic_io import atomic_path, fsync_dir, fsync_file, tmp_name
from mmsora.utils.cli import (ArgumentParser, UserError, check_output_path, note,
                              run_cli, say)


def parse_args(argv=None):
    parser = ArgumentParser(description='checkpoint -> the denoiser state dict alone')
    parser.add_argument('checkpoint', help='a checkpoint file, a DeepSpeed checkpoint '
                        'folder, a diffusers DiT folder, or a work dir (its newest '
                        'checkpoint)')
    parser.add_argument('--out', required=True, help='output file: .pt / .pth (torch.save) '
                        'or .safetensors; with --diffusers / --pipeline a folder')
    parser.add_argument('--no-ema', action='store_true',
                        help='the trained weights, not the EMA ones')
    parser.add_argument('--diffusers', action='store_true',
                        help="an image DiT as diffusers' DiTTransformer2DModel folder "
                        '(config.json, diffusion_pytorch_model.safetensors) at --out')
    parser.add_argument('--num-heads', type=int,
                        help='--diffusers / --pipeline: attention heads, where the source does '
                        'not say them (the run\'s config, with DiT\'s default where it gives '
                        'none, or a diffusers DiT folder\'s config.json does: other heads are '
                        'refused); default: those, or a '
                        'DiT / fast-DiT file\'s args (num_heads, or the size its model '
                        'names), else the DiT paper\'s for its width: S 6, B 12, L 16, XL 16')
    parser.add_argument('--pipeline', action='store_true',
                        help="an image DiT as diffusers' DiTPipeline folder at --out "
                        '(model_index.json, transformer/, vae/, scheduler/)')
    parser.add_argument('--vae', metavar='DIR',
                        help="--pipeline: the local diffusers AutoencoderKL folder of its vae/ "
                        "(default: the run's model.vae folder, or a DiTPipeline folder's "
                        'own vae/)')
    parser.add_argument('--class-names', metavar='FILE',
                        help="--pipeline: the classes' names, one line per class (line N: "
                        "class N's, comma-separated), as the pipeline's id2label")
    return parser.parse_args(argv)


def resolve_checkpoint(path: str) -> str:
    """The checkpoint file, DeepSpeed folder or diffusers DiT folder ``path`` names,
    or its work dir's newest (:func:`mmsora.utils.checkpoint_choice.resolve_checkpoint`)."""
    from mmsora.utils import checkpoint_choice
    try:
        return checkpoint_choice.resolve_checkpoint(path)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None


def read_denoiser(checkpoint: str, use_ema: bool = True):
    """The denoiser's weights in ``checkpoint`` (a file or a DeepSpeed folder), which
    they are, in words: the EMA or the trained ones (asked for, or all that a run
    without EMA kept: warned about), or the one set of a file that does not say (a
    plain state dict), the run's denoiser config (None where the file has none), the
    training arguments of a DiT / fast-DiT file (its ``args``, else None) and the
    run's settings: ``dict(model=its model config or None, objective=`` what
    :func:`~mmsora.utils.trained_settings.checkpoint_objective` reads, or None``)``.
    Before, the EMA weights were reported where a run without EMAHook kept only the
    trained ones.

    EMA weights that by the run's record still hold most of their initial weights (a
    short run's, close to random: :mod:`mmsora.apis.young_ema`) are warned about, as
    tools/infer.py does, naming --no-ema; they were written without a word."""
    from mmsora.apis.inference import denoiser_state_dict, weights_taken
    from mmsora.apis.young_ema import young_ema_warning
    from mmsora.utils.checkpoint import load_checkpoint_file
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint, read_zero_checkpoint
    obj = (read_zero_checkpoint(checkpoint, trained=not use_ema)
           if is_zero_checkpoint(checkpoint) else load_checkpoint_file(checkpoint))
    state = denoiser_state_dict(obj, use_ema, source=checkpoint)
    if not state:
        raise UserError(f'{checkpoint}: no denoiser weights in it (no denoiser.* keys)')
    which = weights_taken(obj, use_ema, checkpoint)
    if which == 'EMA weights':
        line = young_ema_warning(obj, checkpoint, '--no-ema', use='exports')
        if line is not None:
            say(f'warning: {line}')
    from mmsora.utils.trained_settings import checkpoint_objective, trained_model_config
    model = trained_model_config(obj)
    denoiser = (model or {}).get('denoiser')
    trained_args = obj.get('args') if isinstance(obj, dict) and 'state_dict' not in obj \
        else None
    run = dict(model=model, objective=checkpoint_objective(obj))
    return ({k: v.detach().contiguous() for k, v in state.items()}, which,
            denoiser if isinstance(denoiser, dict) else None, trained_args, run)


def heads_in_args(trained_args, width, source: str):
    """``(heads, where)``: the attention heads a DiT / fast-DiT file's ``args`` give
    (an ``argparse.Namespace`` or a dict) and where they were read, or
    ``(None, None)`` where they say nothing of them.

    fast-DiT's file says its size (``args.model='DiT-XL/2'``), and ``--diffusers``
    asked for --num-heads all the same. A ``num_heads`` of its own is taken as it
    is; a preset's heads where the weights are of that preset's width (the heads
    are not in the weights: a shrunk model under a preset's name is refused, not
    given the preset's)."""
    from mmsora.models import DIT_PRESETS
    given = vars(trained_args) if hasattr(trained_args, '__dict__') else trained_args
    if not isinstance(given, dict):
        return None, None
    if isinstance(given.get('num_heads'), int) and given['num_heads'] > 0:
        return given['num_heads'], 'its args.num_heads'
    preset = DIT_PRESETS.get(given.get('model'))
    if preset is None:
        return None, None
    if width != preset['hidden_size']:
        raise UserError(f'{source}: its args.model says {given["model"]} (width '
                        f'{preset["hidden_size"]}, {preset["num_heads"]} heads), but its '
                        f'weights are of width {width}: give --num-heads')
    return preset['num_heads'], f'those of its args.model, {given["model"]}'


def write_diffusers(state: dict, denoiser_cfg, num_heads, out: str, source: str,
                    trained_args=None, source_config=None) -> dict:
    """A DiT's ``state`` as a diffusers DiTTransformer2DModel folder at ``out``, whole
    or not at all (:func:`write_folder`); returns its config
    (:func:`diffusers_transformer`)."""
    converted, config = diffusers_transformer(state, denoiser_cfg, num_heads, source,
                                              trained_args, source_config=source_config)
    write_folder(out, lambda folder: save_transformer(converted, config, folder))
    return config


def diffusers_transformer(state: dict, denoiser_cfg, num_heads, source: str,
                          trained_args=None, flag: str = '--diffusers',
                          source_config=None) -> tuple:
    """A DiT's ``state`` as diffusers' DiTTransformer2DModel: ``(state, config)``. The
    heads come from the run's config (DiT's default where it gives none: the model was
    built with it), a diffusers DiT's own ``source_config`` (its
    transformer's config.json: ``num_attention_heads``), ``num_heads`` (--num-heads:
    refused where those say other heads, as the weights were trained with theirs), a
    DiT / fast-DiT file's ``trained_args`` (:func:`heads_in_args`, said in a note), or
    the DiT paper's for the width. ``flag``: the option the messages name
    (``--diffusers``, ``--pipeline``)."""
    from mmsora.utils.diffusers_dit import DIT_HEADS, diffusers_from_dit
    from mmsora.utils.trained_settings import config_denoiser
    cfg = denoiser_cfg or {}
    # (the type as the run recorded it: a class of one's own is named whether or not
    # its module imports here)
    kind = config_denoiser(dict(denoiser=cfg))
    if kind is not None and kind != 'DiT':  # (it asked for --num-heads, then failed)
        raise UserError(f'{source}: {flag} writes an image DiT as diffusers\' '
                        f'DiTTransformer2DModel; this run\'s denoiser is a {kind}: export it '
                        f'without {flag} (a .pt / .safetensors of its own weights)')
    if 'x_embedder.proj.weight' not in state:  # (it said 'a DiT of width None')
        raise UserError(f'{source}: {flag} writes an image DiT as diffusers\' '
                        'DiTTransformer2DModel; these weights are not a DiT\'s (no '
                        f'x_embedder.proj.weight): export them without {flag}')
    width = state['x_embedder.proj.weight'].shape[0]
    said, where = cfg.get('num_heads'), "its run config's model.denoiser.num_heads"
    if kind == 'DiT' and 'num_heads' not in cfg:
        # built with DiT's default: before, it asked for --num-heads, or gave the
        # paper's heads for the width (6 at 384: other heads than the model's)
        from mmsora.models import DiT
        from mmsora.utils.trained_settings import keyword_defaults
        said = keyword_defaults(DiT)['num_heads']
        where += " (not given: DiT's default)"
    if not said:  # (a diffusers DiT folder: it asked for --num-heads all the same)
        said, where = (source_config or {}).get('num_attention_heads'), \
            "its config.json's num_attention_heads"
    if num_heads and said and num_heads != said:  # (it was written: 0.014 off on 0.5)
        raise UserError(f'{source}: --num-heads {num_heads}, but {where} is {said} (the '
                        f'heads its weights were trained with): leave --num-heads out')
    heads = num_heads or said
    if not heads and trained_args is not None:
        heads, where = heads_in_args(trained_args, width, source)
        if heads:
            note(f'{source}: {heads} heads, {where} (--num-heads N to give others)')
    heads = heads or DIT_HEADS.get(width)
    if not heads:
        said = ('its run config gives no num_heads' if denoiser_cfg else
                'with no run config to say its heads')
        raise UserError(f'{source}: a DiT of width {width}, not one of the paper\'s and {said}: '
                        'give --num-heads')
    if cfg.get('class_dropout_prob') == 0:
        raise UserError(f'{source}: trained with class_dropout_prob=0, so its label table has '
                        'no null-class row, which diffusers\' DiT always has (guidance '
                        'reads it): it cannot be written as one')
    try:
        converted, config = diffusers_from_dit(state, heads, source)
    except ValueError as e:
        raise UserError(str(e)) from None
    if config['num_embeds_ada_norm'] != 1000:  # (an IndexError in the pipeline)
        note(f"{source}: {config['num_embeds_ada_norm']} classes: diffusers' DiTPipeline "
             'takes class 1000 as the null class, so with guidance it samples 1000-class '
             'models alone; call it with guidance_scale=1, or sample with tools/infer.py')
    return converted, config


def save_transformer(converted: dict, config: dict, folder: str) -> None:
    """A DiTTransformer2DModel's weights and config.json in ``folder``."""
    import json
    save_safetensors(converted, osp.join(folder, 'diffusion_pytorch_model.safetensors'))
    with open(osp.join(folder, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)


def write_folder(out: str, fill) -> None:
    """The folder ``out`` with what ``fill(folder)`` writes in it, whole or not at all:
    written in a temporary folder (mmsora.utils.atomic_io's name for ``out``), its files
    made readable as any file written here (:func:`settle`) and synced, then swapped
    in; an earlier export there is replaced whole. An interrupted export leaves no
    half of one."""
    import shutil
    partial = tmp_name(out.rstrip(os.sep))
    try:
        os.makedirs(partial)
        fill(partial)
        settle(partial)
        old = None
        if osp.isdir(out) and os.listdir(out):  # an earlier export: replaced whole
            old = f'{out.rstrip(os.sep)}.old.{os.getpid()}'
            os.replace(out, old)
        elif osp.isdir(out):
            os.rmdir(out)  # (empty)
        os.replace(partial, out)
        fsync_dir(osp.dirname(osp.abspath(out.rstrip(os.sep))))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def settle(folder: str) -> None:
    """Every file under ``folder`` given the umask's mode (safetensors writes 0600: the
    other users of a shared machine could not read an export the .pt of which they
    could) and synced, then the folders."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            os.chmod(osp.join(root, name), 0o666 & ~umask)
            fsync_file(osp.join(root, name))
        fsync_dir(root)


# What --pipeline writes in its folder.
PIPELINE_PARTS = {'model_index.json', 'transformer', 'vae', 'scheduler'}


def pipeline_objective(run: dict, source: str, learn_sigma: bool) -> tuple:
    """``(objective, sigma_small)`` of the run (``run``: :func:`read_denoiser`'s), a
    GaussianDiffusion's settings; DiT's defaults (said in a note), with the weights'
    ``learn_sigma``, for a file that does not say (a released DiT file). Refuses
    another objective in one line."""
    from mmsora.utils.trained_settings import (constructor_defaults, meaning_kind,
                                               objective_settings)
    objective = run['objective']
    if objective is None:
        objective = dict(objective_settings(dict(diffusion=dict(type='GaussianDiffusion'))),
                         learn_sigma=learn_sigma)
        note(f'{source}: the file does not say its objective: DiT\'s is written '
             f'(GaussianDiffusion, {objective["num_timesteps"]} '
             f'{objective["beta_schedule"]} steps)')
    if meaning_kind(objective['type']) != 'GaussianDiffusion':
        raise UserError(f'{source}: a {objective["type"]} run; diffusers\' DiTPipeline samples '
                        'a Gaussian diffusion (DiT\'s) alone: sample it with tools/infer.py, '
                        'or export the transformer alone with --diffusers')
    given = ((run['model'] or {}).get('diffusion') or {})
    sigma_small = given.get('sigma_small',
                            constructor_defaults(objective['type']).get('sigma_small'))
    return objective, bool(sigma_small)


def pipeline_vae(run: dict, vae_dir, in_channels: int, source: str, own_vae=None):
    """The diffusers AutoencoderKL of the pipeline: ``--vae DIR``, the run's
    ``model.vae`` folder, or ``own_vae``, the ``vae/`` of the DiTPipeline folder
    exported again (said in a note), loaded from the local folder (nothing is
    downloaded), its ``scaling_factor`` the run's latent scale (that of the folder
    where the run names no VAE)."""
    from mmsora.models.vaes.autoencoder_kl import AutoencoderKLWrapper
    from mmsora.utils.trained_settings import keyword_defaults
    cfg = (run['model'] or {}).get('vae')
    cfg = cfg if isinstance(cfg, dict) else {}
    kind = str(cfg.get('type', '')).rpartition('.')[2]
    ours = kind == 'AutoencoderKLWrapper'
    if vae_dir:
        path, subfolder = vae_dir, None
    elif ours and cfg.get('pretrained_path'):
        path, subfolder = cfg['pretrained_path'], cfg.get('subfolder')
    elif own_vae:  # (it said 'it names no VAE folder' of a pipeline folder with its vae/)
        path, subfolder = own_vae, None
    else:
        if ours:  # (no pretrained_path: a random VAE built from model.vae.config)
            said = (f'its model.vae ({kind}) is built from a config, with no weights folder '
                    'to copy' if cfg.get('config') is not None else
                    f'its model.vae ({kind}) names no weights folder (pretrained_path)')
        elif kind:  # (a video VAE, Stable Cascade's decoder, one's own)
            said = (f'its model.vae ({kind}) is not an AutoencoderKLWrapper, whose diffusers '
                    'AutoencoderKL folder --pipeline copies')
        else:
            said = 'it names no VAE folder'
        raise UserError(f'{source}: --pipeline needs the VAE that decodes its latents and '
                        f'{said}: give --vae DIR (a local diffusers AutoencoderKL folder)')
    defaults = keyword_defaults(AutoencoderKLWrapper.__init__)
    shift = cfg.get('shift_factor', defaults['shift_factor']) if ours else 0
    if shift:
        raise UserError(f'{source}: latents shifted by model.vae.shift_factor={shift:g}, '
                        "which diffusers' DiTPipeline does not undo (it divides by "
                        'scaling_factor alone): it cannot be written as one')
    try:
        vae = AutoencoderKLWrapper(pretrained_path=path, subfolder=subfolder).vae
    except (OSError, ValueError) as e:
        raise UserError(f'--vae {path}: {e}' if vae_dir else str(e)) from None
    if vae.config.latent_channels != in_channels:
        raise UserError(f'{source}: a DiT of {in_channels} input channels, and the VAE at '
                        f'{path} has {vae.config.latent_channels} latent channels: give '
                        'the VAE it was trained with (--vae DIR)')
    if ours:
        vae.register_to_config(scaling_factor=float(
            cfg.get('scale_factor', defaults['scale_factor'])))
    elif path == own_vae:
        note(f'{source}: its own VAE is written ({path}, scaling_factor '
             f'{vae.config.scaling_factor:g}; --vae DIR to give another)')
    else:
        note(f'{source}: the run names no VAE of its own: {path}\'s scaling_factor '
             f'{vae.config.scaling_factor:g} is taken for its latents\' scale')
    return vae


def read_class_names(path: str, num_classes: int) -> dict:
    """DiTPipeline's ``id2label`` from a text file: line N, class N's names (commas
    between a class's several names, as ImageNet's list has them)."""
    try:
        with open(path, encoding='utf-8') as f:
            names = [line.strip() for line in f.read().splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'--class-names {path}: cannot be read ({e})') from None
    while names and not names[-1]:
        names.pop()  # (a trailing blank line)
    if len(names) != num_classes:
        raise UserError(f'--class-names {path}: {len(names)} lines for a model of '
                        f'{num_classes} classes: give one line per class')
    if '' in names:
        raise UserError(f'--class-names {path}: line {names.index("") + 1} is empty: give '
                        'each class a name')
    return {str(i): name for i, name in enumerate(names)}


def write_pipeline(state: dict, denoiser_cfg, run: dict, args, source: str,
                   trained_args=None, source_config=None) -> dict:
    """A DiT's ``state`` as diffusers' DiTPipeline folder at ``args.out``, whole or not
    at all (:func:`write_folder`): ``model_index.json``, ``transformer/``
    (:func:`diffusers_transformer`), ``vae/`` (:func:`pipeline_vae`; the source's own
    where it is a DiTPipeline folder) and ``scheduler/``
    (:func:`mmsora.utils.diffusers_dit.dit_scheduler` over the run's
    GaussianDiffusion); returns the transformer's config. A run in pixel space (no
    ``model.vae``, 3 input channels) is refused: DiTPipeline decodes with a VAE."""
    import json

    import diffusers

    from mmsora.utils.diffusers_dit import dit_pipeline_vae, dit_scheduler, save_dit_scheduler
    from mmsora.utils.trained_settings import config_denoiser
    model, patch = run['model'], state.get('x_embedder.proj.weight')
    if (isinstance(model, dict) and model.get('vae') is None and config_denoiser(model) == 'DiT'
            and patch is not None and patch.shape[1] == 3):
        # (it asked for --vae, then refused every VAE for its 3 channels)
        raise UserError(f'{source}: a run in pixel space (no model.vae) has no VAE for '
                        "diffusers' DiTPipeline, which decodes latents with one: export "
                        'the transformer alone with --diffusers, or a .pt')
    converted, config = diffusers_transformer(state, denoiser_cfg, args.num_heads, source,
                                              trained_args, flag='--pipeline',
                                              source_config=source_config)
    objective, sigma_small = pipeline_objective(
        run, source, learn_sigma=config['out_channels'] == 2 * config['in_channels'])
    id2label = (read_class_names(args.class_names, config['num_embeds_ada_norm'])
                if args.class_names else None)
    try:
        scheduler = dit_scheduler(objective, sigma_small, source)
    except ValueError as e:
        raise UserError(str(e)) from None
    vae = pipeline_vae(run, args.vae, config['in_channels'], source,
                       own_vae=dit_pipeline_vae(source))
    index = {'_class_name': 'DiTPipeline', '_diffusers_version': diffusers.__version__,
             'scheduler': ['diffusers', type(scheduler).__name__],
             'transformer': ['diffusers', 'DiTTransformer2DModel'],
             'vae': ['diffusers', 'AutoencoderKL']}
    if id2label:
        index['id2label'] = id2label

    def fill(folder):
        os.makedirs(osp.join(folder, 'transformer'))
        save_transformer(converted, config, osp.join(folder, 'transformer'))
        vae.save_pretrained(osp.join(folder, 'vae'))
        save_dit_scheduler(scheduler, osp.join(folder, 'scheduler'))
        with open(osp.join(folder, 'model_index.json'), 'w') as f:
            json.dump(index, f, indent=2, sort_keys=True)

    write_folder(args.out, fill)
    return dict(config, steps=objective['num_timesteps'],
                schedule=scheduler.config.beta_schedule)


EXPORT_FILES = {'config.json', 'diffusion_pytorch_model.safetensors'}


def is_earlier_export(folder: str, pipeline: bool = False) -> bool:
    """Whether ``folder`` holds what ``--diffusers`` writes and nothing else (a
    DiTTransformer2DModel's config.json and its weights), or, ``pipeline``, what
    ``--pipeline`` writes (a DiTPipeline's model_index.json and its three folders):
    such a folder is replaced, as a .pt is; any other folder that is not empty is
    refused."""
    import json
    parts, config, name = ((PIPELINE_PARTS, 'model_index.json', 'DiTPipeline') if pipeline
                           else (EXPORT_FILES, 'config.json', 'DiTTransformer2DModel'))
    if set(os.listdir(folder)) != parts:
        return False
    try:
        with open(osp.join(folder, config), encoding='utf-8') as f:
            return json.load(f).get('_class_name') == name
    except (OSError, ValueError, AttributeError):
        return False


def save_safetensors(state: dict, path: str) -> None:
    """safetensors' ``save_file``, the file then readable as any file written here is
    (the umask's mode): safetensors writes it 0600, so the other users of a shared
    machine could not read an export the .pt of which they could."""
    from safetensors.torch import save_file
    save_file(state, path)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_state_dict(state: dict, out: str) -> None:
    """``state`` to ``out``, whole or not at all (a temporary file renamed)."""
    with atomic_path(out) as partial:
        if out.endswith('.safetensors'):
            save_safetensors(state, partial)
        else:
            torch.save(state, partial)


def main(argv=None):
    args = parse_args(argv)
    if args.diffusers and args.pipeline:
        raise UserError('give --diffusers (the transformer folder alone) or --pipeline (the '
                        'whole DiTPipeline folder), not both')
    folder = args.diffusers or args.pipeline
    flag = '--pipeline' if args.pipeline else '--diffusers'
    if not args.pipeline and (args.vae or args.class_names):
        raise UserError(f'{"--vae" if args.vae else "--class-names"} is for --pipeline (the '
                        'DiTPipeline folder holds the VAE and the class names)')
    if folder:
        if args.out.endswith(('.pt', '.pth', '.safetensors')):
            raise UserError(f'--out {args.out}: with {flag} give a folder (its '
                            f'{"parts" if args.pipeline else "config.json and weights"} '
                            'are written in it)')
    elif not args.out.endswith(('.pt', '.pth', '.safetensors')):
        raise UserError(f'--out {args.out}: give a .pt, .pth or .safetensors file name (or '
                        '--diffusers for a diffusers folder)')
    elif args.num_heads:
        raise UserError('--num-heads is for --diffusers (a state dict needs no heads)')
    check_output_path(args.out, '--out', folder=folder)
    if (folder and osp.isdir(args.out) and os.listdir(args.out)
            and not is_earlier_export(args.out, args.pipeline)):
        parts = ('model_index.json, transformer/, vae/ and scheduler/' if args.pipeline
                 else 'config.json and diffusion_pytorch_model.safetensors')
        raise UserError(f'--out {args.out}: a folder that is not empty and not an earlier '
                        f'export ({parts} alone); give a new one')
    checkpoint = resolve_checkpoint(args.checkpoint)
    state, which, denoiser_cfg, trained_args, run = read_denoiser(checkpoint,
                                                                   use_ema=not args.no_ema)
    n = sum(v.numel() for v in state.values())
    from mmsora.utils.diffusers_dit import diffusers_dit_config
    source_config = diffusers_dit_config(checkpoint) if folder else None
    if args.pipeline:
        config = write_pipeline(state, denoiser_cfg, run, args, checkpoint, trained_args,
                                source_config)
        print(f'{checkpoint} -> {args.out}: the denoiser\'s {which} ({n / 1e6:.2f} M '
              f'parameters), as diffusers\' DiTPipeline ({config["num_layers"]} blocks, '
              f'{config["num_attention_heads"]} heads, sample_size {config["sample_size"]}, '
              f'{config["num_embeds_ada_norm"]} classes; DDIMScheduler over '
              f'{config["steps"]} {config["schedule"]} steps)')
        return
    if args.diffusers:
        config = write_diffusers(state, denoiser_cfg, args.num_heads, args.out, checkpoint,
                                 trained_args, source_config)
        print(f'{checkpoint} -> {args.out}: the denoiser\'s {which} ({n / 1e6:.2f} M '
              f'parameters), as diffusers\' DiTTransformer2DModel ({config["num_layers"]} '
              f'blocks, {config["num_attention_heads"]} heads, sample_size '
              f'{config["sample_size"]}, {config["num_embeds_ada_norm"]} classes)')
        return
    write_state_dict(state, args.out)
    print(f'{checkpoint} -> {args.out}: the denoiser\'s {which} ({len(state)} '
          f'tensors, {n / 1e6:.2f} M parameters)')


if __name__ == '__main__':
    sys.exit(run_cli(main))
