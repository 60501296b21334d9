"""Write a run's denoiser weights alone, as DiT releases them.

    python tools/export_denoiser.py work_dirs/RUN --out DiT-XL-2-mine.pt
    python tools/export_denoiser.py work_dirs/RUN/iter_400000.pth --out dit.safetensors
    python tools/export_denoiser.py work_dirs/RUN --out raw.pt --no-ema
    python tools/export_denoiser.py work_dirs/RUN --diffusers --out DiT-mine/transformer

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
"""
import os
import os.path as osp
import sys

import torch

from mmsora.utils.atomic_io import atomic_path, fsync_dir, fsync_file, tmp_name
from mmsora.utils.cli import ArgumentParser, UserError, check_output_path, note, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='checkpoint -> the denoiser state dict alone')
    parser.add_argument('checkpoint', help='a checkpoint file, a DeepSpeed checkpoint '
                        'folder, a diffusers DiT folder, or a work dir (its newest '
                        'checkpoint)')
    parser.add_argument('--out', required=True, help='output file: .pt / .pth (torch.save) '
                        'or .safetensors; with --diffusers a folder')
    parser.add_argument('--no-ema', action='store_true',
                        help='the trained weights, not the EMA ones')
    parser.add_argument('--diffusers', action='store_true',
                        help="an image DiT as diffusers' DiTTransformer2DModel folder "
                        '(config.json, diffusion_pytorch_model.safetensors) at --out')
    parser.add_argument('--num-heads', type=int,
                        help='--diffusers: attention heads (default: the run\'s config, '
                        'or a DiT / fast-DiT file\'s args (num_heads, or the size its '
                        'model names), else the DiT paper\'s for its width: S 6, B 12, '
                        'L 16, XL 16)')
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
    plain state dict), the run's denoiser config (None where the file has none) and
    the training arguments of a DiT / fast-DiT file (its ``args``, else None).
    Before, the EMA weights were reported where a run without EMAHook kept only the
    trained ones."""
    from mmsora.apis.inference import denoiser_state_dict, weights_taken
    from mmsora.utils.checkpoint import load_checkpoint_file
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint, read_zero_checkpoint
    obj = (read_zero_checkpoint(checkpoint, trained=not use_ema)
           if is_zero_checkpoint(checkpoint) else load_checkpoint_file(checkpoint))
    state = denoiser_state_dict(obj, use_ema, source=checkpoint)
    if not state:
        raise UserError(f'{checkpoint}: no denoiser weights in it (no denoiser.* keys)')
    which = weights_taken(obj, use_ema, checkpoint)
    from mmsora.utils.trained_settings import trained_model_config
    denoiser = (trained_model_config(obj) or {}).get('denoiser')
    trained_args = obj.get('args') if isinstance(obj, dict) and 'state_dict' not in obj \
        else None
    return ({k: v.detach().contiguous() for k, v in state.items()}, which,
            denoiser if isinstance(denoiser, dict) else None, trained_args)


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
                    trained_args=None) -> dict:
    """A DiT's ``state`` as a diffusers DiTTransformer2DModel folder at ``out``, whole
    or not at all (a temporary folder renamed); returns its config. The heads come
    from ``num_heads``, the run's config, a DiT / fast-DiT file's ``trained_args``
    (:func:`heads_in_args`, said in a note), or the DiT paper's for the width."""
    from mmsora.utils.diffusers_dit import DIT_HEADS, diffusers_from_dit
    from mmsora.utils.trained_settings import config_denoiser
    cfg = denoiser_cfg or {}
    # (the type as the run recorded it: a class of one's own is named whether or not
    # its module imports here)
    kind = config_denoiser(dict(denoiser=cfg))
    if kind is not None and kind != 'DiT':  # (it asked for --num-heads, then failed)
        raise UserError(f'{source}: --diffusers writes an image DiT as diffusers\' '
                        f'DiTTransformer2DModel; this run\'s denoiser is a {kind}: export it '
                        'without --diffusers (a .pt / .safetensors of its own weights)')
    if 'x_embedder.proj.weight' not in state:  # (it said 'a DiT of width None')
        raise UserError(f'{source}: --diffusers writes an image DiT as diffusers\' '
                        'DiTTransformer2DModel; these weights are not a DiT\'s (no '
                        'x_embedder.proj.weight): export them without --diffusers')
    width = state['x_embedder.proj.weight'].shape[0]
    heads = num_heads or cfg.get('num_heads')
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
    import json
    import shutil
    # Written in a temporary folder (mmsora.utils.atomic_io's name for ``out``), its
    # files synced, then swapped in: an interrupted export leaves no half of one.
    partial = tmp_name(out.rstrip(os.sep))
    try:
        os.makedirs(partial)
        weights = osp.join(partial, 'diffusion_pytorch_model.safetensors')
        save_safetensors(converted, weights)
        with open(osp.join(partial, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2, sort_keys=True)
        for path in (weights, osp.join(partial, 'config.json')):
            fsync_file(path)
        fsync_dir(partial)
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
    return config


EXPORT_FILES = {'config.json', 'diffusion_pytorch_model.safetensors'}


def is_earlier_export(folder: str) -> bool:
    """Whether ``folder`` holds what ``--diffusers`` writes and nothing else (a
    DiTTransformer2DModel's config.json and its weights): such a folder is replaced,
    as a .pt is; any other folder that is not empty is refused."""
    import json
    if set(os.listdir(folder)) != EXPORT_FILES:
        return False
    try:
        with open(osp.join(folder, 'config.json'), encoding='utf-8') as f:
            return json.load(f).get('_class_name') == 'DiTTransformer2DModel'
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
    if args.diffusers:
        if args.out.endswith(('.pt', '.pth', '.safetensors')):
            raise UserError(f'--out {args.out}: with --diffusers give a folder (its '
                            'config.json and weights are written in it)')
    elif not args.out.endswith(('.pt', '.pth', '.safetensors')):
        raise UserError(f'--out {args.out}: give a .pt, .pth or .safetensors file name (or '
                        '--diffusers for a diffusers folder)')
    elif args.num_heads:
        raise UserError('--num-heads is for --diffusers (a state dict needs no heads)')
    check_output_path(args.out, '--out', folder=args.diffusers)
    if (args.diffusers and osp.isdir(args.out) and os.listdir(args.out)
            and not is_earlier_export(args.out)):  # (an earlier export is replaced)
        raise UserError(f'--out {args.out}: a folder that is not empty and not an earlier '
                        "export (config.json and diffusion_pytorch_model.safetensors "
                        'alone); give a new one')
    checkpoint = resolve_checkpoint(args.checkpoint)
    state, which, denoiser_cfg, trained_args = read_denoiser(checkpoint,
                                                              use_ema=not args.no_ema)
    n = sum(v.numel() for v in state.values())
    if args.diffusers:
        config = write_diffusers(state, denoiser_cfg, args.num_heads, args.out, checkpoint,
                                 trained_args)
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
