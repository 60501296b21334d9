"""Turn a DeepSpeed ZeRO checkpoint folder into one plain checkpoint file.

    python tools/zero_to_state_dict.py work_dirs/RUN/iter_1000.pth [--out FILE]
    python tools/zero_to_state_dict.py work_dirs/RUN            # its last checkpoint

``tools/train.py --deepspeed ...`` saves each checkpoint as a folder (DeepSpeed's
layout: ``mp_rank_00_model_states.pt`` (ZeRO-3: ``zero_pp_rank_0_...``) and one
``*_optim_states.pt`` per rank, the fp32 master weights partitioned across them).
This gathers the fp32 weights of every ZeRO stage with DeepSpeed's own
``zero_to_fp32`` and writes an mmengine-style file that ``tools/infer.py --checkpoint
FILE`` and ``tools/train.py --load-from FILE`` read: ``{'state_dict': EMA weights,
'ema_state_dict': trained weights and the EMA's count of updates ('steps'), 'meta'}``
when the run had an EMA (ShardedEMAHook under ZeRO-1/2/3, FP32EMAHook without ZeRO),
else ``{'state_dict': trained weights, 'meta'}``. Runs on CPU; needs only the files.
(``tools/infer.py`` also reads the folder itself, through the same
:func:`read_zero_checkpoint`.)
"""
import os.path as osp
import sys

import torch

from mmsora.utils.atomic_io import atomic_path
from mmsora.utils.checkpoint_choice import last_checkpoint
from mmsora.utils.cli import ArgumentParser, UserError, check_output_path, run_cli
from mmsora.utils.zero_checkpoint import read_zero_checkpoint, zero_model_states


def parse_args(argv=None):
    parser = ArgumentParser(description='ZeRO checkpoint folder -> state dict')
    parser.add_argument('checkpoint', help='a ZeRO checkpoint folder (iter_N.pth/) or '
                        'a work dir (its last_checkpoint is taken)')
    parser.add_argument('--out', help='output file (default: the folder name with '
                        '_state_dict.pth, beside the folder)')
    return parser.parse_args(argv)


def resolve_folder(path: str) -> str:
    """The ZeRO checkpoint folder that ``path`` names or that its work dir last saved."""
    if osp.isdir(path) and not zero_model_states(path):
        path = last_checkpoint(path) or path  # a work dir: its newest checkpoint
    if not osp.exists(path):
        raise UserError(f'{path} does not exist')
    if not osp.isdir(path):
        raise UserError(f'{path} is not a ZeRO checkpoint folder (a plain checkpoint file '
                        'needs no conversion)')
    if not zero_model_states(path):
        raise UserError(f'{path} has no mp_rank_00_model_states.pt (ZeRO-3: '
                        'zero_pp_rank_0_mp_rank_00_model_states.pt): not a DeepSpeed '
                        'checkpoint folder')
    return path.rstrip('/')


def zero_to_state_dict(folder: str) -> dict:
    """``{'state_dict': fp32 weights, 'meta': ...}`` of a ZeRO checkpoint folder (with
    ``ema_state_dict`` when the run kept an EMA): :func:`read_zero_checkpoint`."""
    return read_zero_checkpoint(folder)


def main(argv=None):
    args = parse_args(argv)
    folder = resolve_folder(args.checkpoint)
    out = args.out or osp.splitext(folder)[0] + '_state_dict.pth'
    check_output_path(out, '--out')  # before the conversion, which can take minutes
    ckpt = zero_to_state_dict(folder)
    # Whole or not at all: an interrupted save leaves no file that looks converted.
    with atomic_path(out) as partial:
        torch.save(ckpt, partial)
    n = sum(v.numel() for v in ckpt['state_dict'].values())
    print(f'{folder} -> {out}: {len(ckpt["state_dict"])} tensors, {n / 1e6:.2f} M values')


if __name__ == '__main__':
    sys.exit(run_cli(main))
