"""Write a run's denoiser weights alone, as DiT releases them.

    python tools/export_denoiser.py work_dirs/RUN --out DiT-XL-2-mine.pt
    python tools/export_denoiser.py work_dirs/RUN/iter_400000.pth --out dit.safetensors
    python tools/export_denoiser.py work_dirs/RUN --out raw.pt --no-ema

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
"""
import os
import os.path as osp
import sys

import torch

from mmsora.utils.cli import ArgumentParser, UserError, check_output_path, run_cli


def parse_args(argv=None):
    parser = ArgumentParser(description='checkpoint -> the denoiser state dict alone')
    parser.add_argument('checkpoint', help='a checkpoint file, a DeepSpeed checkpoint '
                        'folder, a diffusers DiT folder, or a work dir (its newest '
                        'checkpoint)')
    parser.add_argument('--out', required=True, help='output file: .pt / .pth (torch.save) '
                        'or .safetensors')
    parser.add_argument('--no-ema', action='store_true',
                        help='the trained weights, not the EMA ones')
    return parser.parse_args(argv)


def resolve_checkpoint(path: str) -> str:
    """The checkpoint file, DeepSpeed folder or diffusers DiT folder ``path`` names,
    or its work dir's newest."""
    from mmsora.utils.checkpoint import last_checkpoint
    from mmsora.utils.diffusers_dit import diffusers_dit_folder
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint
    if not osp.exists(path):
        raise UserError(f'{path} does not exist')
    if osp.isdir(path) and not is_zero_checkpoint(path) and diffusers_dit_folder(path) is None:
        newest = last_checkpoint(path)  # its last_checkpoint, else its iter_N.pth
        if newest is None:
            raise UserError(f'{path}: a folder that is neither a DeepSpeed checkpoint '
                            'folder nor a work dir with a checkpoint (last_checkpoint, '
                            'iter_N.pth)')
        return newest
    return path


def read_denoiser(checkpoint: str, use_ema: bool = True):
    """The denoiser's weights in ``checkpoint`` (a file or a DeepSpeed folder), and
    which they are, in words: the EMA or the trained ones (asked for, or all that a
    run without EMA kept: warned about), or the one set of a file that does not say
    (a plain state dict). Before, the EMA weights were reported where a run without
    EMAHook kept only the trained ones."""
    from mmsora.apis.inference import denoiser_state_dict, ema_kept
    from mmsora.utils.checkpoint import load_checkpoint_file
    from mmsora.utils.zero_checkpoint import is_zero_checkpoint, read_zero_checkpoint
    obj = (read_zero_checkpoint(checkpoint, trained=not use_ema)
           if is_zero_checkpoint(checkpoint) else load_checkpoint_file(checkpoint))
    state = denoiser_state_dict(obj, use_ema, source=checkpoint)
    if not state:
        raise UserError(f'{checkpoint}: no denoiser weights in it (no denoiser.* keys)')
    kept = ema_kept(obj, checkpoint)
    which = ('weights (the one set in it, EMA or not: the file does not say)'
             if kept is None else
             'EMA weights' if use_ema and kept else 'trained weights')
    return {k: v.detach().contiguous() for k, v in state.items()}, which


def write_state_dict(state: dict, out: str) -> None:
    """``state`` to ``out``, whole or not at all (a temporary file renamed)."""
    os.makedirs(osp.dirname(osp.abspath(out)) or '.', exist_ok=True)
    partial = f'{out}.tmp.{os.getpid()}'
    try:
        if out.endswith('.safetensors'):
            from safetensors.torch import save_file
            save_file(state, partial)
        else:
            torch.save(state, partial)
        os.replace(partial, out)
    finally:
        if osp.exists(partial):
            os.remove(partial)


def main(argv=None):
    args = parse_args(argv)
    if not args.out.endswith(('.pt', '.pth', '.safetensors')):
        raise UserError(f'--out {args.out}: give a .pt, .pth or .safetensors file name')
    check_output_path(args.out, '--out')
    checkpoint = resolve_checkpoint(args.checkpoint)
    state, which = read_denoiser(checkpoint, use_ema=not args.no_ema)
    write_state_dict(state, args.out)
    n = sum(v.numel() for v in state.values())
    print(f'{checkpoint} -> {args.out}: the denoiser\'s {which}, {len(state)} '
          f'tensors, {n / 1e6:.2f} M parameters')


if __name__ == '__main__':
    sys.exit(run_cli(main))
