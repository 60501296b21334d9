"""Turn a DeepSpeed ZeRO checkpoint folder into one plain checkpoint file.

    python tools/zero_to_state_dict.py work_dirs/RUN/iter_1000.pth [--out FILE]
    python tools/zero_to_state_dict.py work_dirs/RUN            # its last checkpoint

``tools/train.py --deepspeed ...`` saves each checkpoint as a folder (DeepSpeed's
layout: ``mp_rank_00_model_states.pt`` (ZeRO-3: ``zero_pp_rank_0_...``) and one
``*_optim_states.pt`` per rank, the fp32 master weights partitioned across them). This gathers the fp32 weights of every
ZeRO stage with DeepSpeed's own ``zero_to_fp32`` and writes an mmengine-style file
that ``tools/infer.py --checkpoint FILE`` and ``tools/train.py --load-from FILE`` read:
``{'state_dict': EMA weights, 'ema_state_dict': trained weights, 'meta'}`` when the
run had an EMA (ShardedEMAHook under ZeRO-1/2/3, FP32EMAHook without ZeRO), else ``{'state_dict': trained weights, 'meta'}``. Runs on
CPU; needs only the files.
"""
import argparse
import os.path as osp
import sys

import torch

from mmsora.engine.strategies import zero_model_states
from mmsora.utils.cli import UserError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='ZeRO checkpoint folder -> state dict')
    parser.add_argument('checkpoint', help='a ZeRO checkpoint folder (iter_N.pth/) or '
                        'a work dir (its last_checkpoint is taken)')
    parser.add_argument('--out', help='output file (default: the folder name with '
                        '_state_dict.pth, beside the folder)')
    return parser.parse_args(argv)


def resolve_folder(path: str) -> str:
    """The ZeRO checkpoint folder that ``path`` names or that its work dir last saved."""
    last = osp.join(path, 'last_checkpoint')
    if osp.isdir(path) and not zero_model_states(path) and osp.isfile(last):
        with open(last) as f:
            named = f.read().strip()
        path = named if osp.isdir(named) else osp.join(path, osp.basename(named))
    if not osp.isdir(path):
        raise UserError(f'{path} is not a ZeRO checkpoint folder (a plain checkpoint file '
                        'needs no conversion)')
    if not zero_model_states(path):
        raise UserError(f'{path} has no mp_rank_00_model_states.pt (ZeRO-3: '
                        'zero_pp_rank_0_mp_rank_00_model_states.pt): not a DeepSpeed '
                        'checkpoint folder')
    return path.rstrip('/')


def zero_to_state_dict(folder: str) -> dict:
    """``{'state_dict': fp32 weights, 'meta': ...}`` of a ZeRO checkpoint folder."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    parent, tag = osp.split(osp.abspath(folder))
    state = get_fp32_state_dict_from_zero_checkpoint(parent, tag=tag)
    # DeepSpeed's own files, written by this run: its loader reads them the same way.
    client = torch.load(zero_model_states(folder), map_location='cpu',
                        weights_only=False)
    meta = {k: v for k, v in (client.get('meta') or {}).items() if k in ('seed', 'time')}
    meta.update(iter=client.get('global_steps'), converted_from=osp.abspath(folder))
    weights = {k: v.contiguous() for k, v in state.items()}
    if 'ema_state_dict' not in client:  # no EMA: the trained weights
        return dict(state_dict=weights, meta=meta)
    # mmengine's layout: EMA weights in state_dict, the trained ones in ema_state_dict
    # (here the fp32 masters, not the module's 16-bit copies).
    ema = {k: v.float() for k, v in client['state_dict'].items()}
    raw = {f'module.{k}': v for k, v in weights.items()}
    return dict(state_dict=ema, ema_state_dict=raw, meta=meta)


def main(argv=None):
    args = parse_args(argv)
    folder = resolve_folder(args.checkpoint)
    out = args.out or osp.splitext(folder)[0] + '_state_dict.pth'
    ckpt = zero_to_state_dict(folder)
    torch.save(ckpt, out)
    n = sum(v.numel() for v in ckpt['state_dict'].values())
    print(f'{folder} -> {out}: {len(ckpt["state_dict"])} tensors, {n / 1e6:.2f} M values')


if __name__ == '__main__':
    sys.exit(run_cli(main))
