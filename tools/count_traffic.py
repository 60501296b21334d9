"""Count the memory traffic of a DiT block's non-matmul operators: ``python
tools/count_traffic.py [--hidden-size 1152 --num-heads 16 --tokens 256]``.

Bytes read and written by every operator of one DiT block's forward and backward pass
under bf16 autocast, outside the matrix products and attention (what tensor cores
do): norms, modulation, gates, residual adds, GELU, dtype casts and the reductions
of the backward pass. Counted on the CPU with real tensors at 1 and 2 samples, so
that what does not grow with the batch (the weights' casts) drops out: the figure is
per sample and per block. At a GPU's memory bandwidth it bounds the time these
operators take in eager mode, where each one reads and writes (N, T, D) tensors in
full; a compiler that fuses them (``--compile``) removes most of it. Used in
docs/benchmarks.md to read DiT-XL/2's MFU on a GPU.
"""
import collections
import math
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mmsora.utils.cli import ArgumentParser, UserError, check_at_least, run_cli

# Work on tensor cores, counted as FLOPs (mmsora/utils/flops.py), and views (no data).
SKIPPED = {
    'mm', 'addmm', 'bmm', 'baddbmm', '_scaled_dot_product_flash_attention_for_cpu',
    '_scaled_dot_product_flash_attention_for_cpu_backward',
    'view', '_unsafe_view', 't', 'transpose', 'expand', 'unsqueeze', 'split',
    'split_with_sizes', 'detach', 'permute', 'as_strided', 'select', 'slice', 'squeeze',
    'unbind', 'alias'}


class TrafficCounter(TorchDispatchMode):
    """Bytes of every tensor an operator reads or writes, by operator name."""

    def __init__(self):
        super().__init__()
        self.bytes, self.calls = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._overloadpacket.__name__
        if name not in SKIPPED:
            self.bytes[name] += sum(t.numel() * t.element_size()
                                    for t in tree_flatten((args, kwargs, out))[0]
                                    if isinstance(t, torch.Tensor))
            self.calls[name] += 1
        return out


def count(block, n, tokens, width):
    block.zero_grad(set_to_none=True)  # a step's first backward: no accumulation
    torch.manual_seed(0)
    x = torch.randn(n, tokens, width, requires_grad=True)
    c = torch.randn(n, width)
    with TrafficCounter() as counter:
        with torch.autocast('cpu', torch.bfloat16):
            out = block(x, c)
        out.sum().backward()
    return counter


def traffic_per_sample(hidden_size, num_heads, tokens):
    """``({operator: bytes per sample}, {operator: calls})`` of one DiT block's
    forward + backward: the count at 2 samples less the count at 1."""
    from mmsora.models.denoisers.dit import DiTBlock
    block = DiTBlock(hidden_size, num_heads)
    one, two = (count(block, n, tokens, hidden_size) for n in (1, 2))
    return {k: two.bytes[k] - one.bytes[k] for k in two.bytes}, dict(two.calls)


def check_args(args) -> None:
    """Sizes of at least 1, a width the heads divide, a positive finite bandwidth."""
    check_at_least(args, ('hidden_size', 'num_heads', 'tokens', 'depth', 'batch_size'))
    if args.hidden_size % args.num_heads:
        raise UserError(f'--hidden-size {args.hidden_size} must be a multiple of '
                        f'--num-heads {args.num_heads} (each head takes an equal share)')
    if not 0 < args.bandwidth < math.inf:
        raise UserError(f'--bandwidth must be a finite number of TB/s above 0 (H200: 4.8), '
                        f'got {args.bandwidth:g}')


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--hidden-size', type=int, default=1152, help='D (XL: 1152)')
    parser.add_argument('--num-heads', type=int, default=16)
    parser.add_argument('--tokens', type=int, default=256, help='T (256 px, /2: 256)')
    parser.add_argument('--depth', type=int, default=28, help='blocks, for the totals')
    parser.add_argument('--batch-size', type=int, default=256, help='for the totals')
    parser.add_argument('--bandwidth', type=float, default=4.8,
                        help='memory bandwidth in TB/s for the time bound (H200: 4.8, '
                        'H100 SXM: 3.35, A100 80GB: 2.0)')
    args = parser.parse_args(argv)
    check_args(args)
    per_sample, calls = traffic_per_sample(args.hidden_size, args.num_heads, args.tokens)
    total = sum(per_sample.values())
    elements = args.tokens * args.hidden_size
    print(f'DiT block D={args.hidden_size} T={args.tokens}, bf16 autocast, forward + '
          f'backward: {total / 2**20:.2f} MiB per sample outside matrix products '
          f'({total / elements:.0f} bytes per token channel)')
    for name, size in sorted(per_sample.items(), key=lambda kv: -kv[1]):
        if size:
            print(f'  {name:28s} {calls[name]:3d} calls  {size / 2**20:7.2f} MiB')
    step = total * args.depth * args.batch_size
    print(f'{args.depth} blocks x batch {args.batch_size}: {step / 2**30:.1f} GiB per '
          f'step; at {args.bandwidth:g} TB/s at least {step / args.bandwidth / 1e9:.1f} ms')


if __name__ == '__main__':
    sys.exit(run_cli(main))
