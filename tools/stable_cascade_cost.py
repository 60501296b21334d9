"""Training-step cost of StableCascadeVideo against VideoDiT at the same output size.

Two measurements behind docs/stable_cascade.md:

* **Counted at real sizes** on the meta device (nothing is allocated): FLOPs of the
  forward pass and of a training step (forward + backward) by ``torch``'s
  ``FlopCounterMode``, and the bytes autograd saves for the backward pass (the
  activation memory of a step without checkpointing, with fused attention and
  without the weights; views of activations count separately: an upper bound).
* **Measured on CPU** at scaled sizes (both models at 1/4 width and about 1/4 depth):
  CPU seconds per training step (forward, backward, AdamW; process time, steadier
  than wall time on a shared machine) and the growth of the process's peak RSS during
  the steps (Linux's VmHWM, reset right before them: unlike ``ru_maxrss`` it leaves out
  the model's building and the process before its ``exec``; nan without ``/proc``),
  each model in its own process.

    python tools/stable_cascade_cost.py                # counts
    python tools/stable_cascade_cost.py --measure      # + CPU timing

Stage C latents are 42.67x smaller than the frames (``ceil(side / 42.67)``, 24 for
1024 px); SD-VAE latents 8x (VideoDiT-XL/2: patch 2, so 16x fewer tokens than pixels).
"""
import argparse
import json
import math
import subprocess
import sys
import time

import torch

from mmsora.utils.process_memory import peak_rss_figure, reset_peak_rss, rss_mb

__all__ = ['model_configs', 'step_inputs', 'count_step']

STAGE_C_FACTOR = 1024 / 24  # 42.67: 1024 px frames <-> 24x24 Stage C latents


def model_configs(scaled: bool = False) -> dict:
    """Denoiser configs: ``name -> (cfg, kind)``, real sizes or 1/4-width scaled ones."""
    from mmsora.models.denoisers.stable_cascade_video import STAGE_C_LITE
    unet = dict(STAGE_C_LITE)
    dit = dict(type='VideoDiT', patch_size=2, in_channels=4, hidden_size=1152, depth=28,
               num_heads=16, num_classes=101, num_frames=16, block_type='latte')
    if scaled:
        unet.update(conditioning_dim=384, block_out_channels=(384, 384),
                    num_attention_heads=(6, 6), down_num_layers_per_block=(1, 3),
                    up_num_layers_per_block=(3, 1))
        # 28 -> 8 (latte needs an even depth): 2/7 of the depth against Stage C's 1/4.
        dit.update(hidden_size=288, depth=8, num_heads=4)
    stage_c = dict(type='StableCascadeVideo', unet=unet, temporal_layers=('attn',))
    return {
        'StableCascadeVideo lite': (stage_c, 'stage_c'),
        'StableCascadeVideo lite, spatial frozen': (dict(stage_c, freeze_spatial=True),
                                                    'stage_c'),
        'VideoDiT-XL/2': (dit, 'dit'),
    }


def step_inputs(cfg: dict, kind: str, pixels: int, frames: int = 16, device='cpu'):
    """``(args, kwargs)`` of one clip at ``pixels`` x ``pixels`` output resolution."""
    g = torch.Generator().manual_seed(0) if device != 'meta' else None

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device) if g else \
            torch.randn(*shape, device=device)

    if kind == 'stage_c':
        side = math.ceil(pixels / STAGE_C_FACTOR)
        u = cfg['unet']
        return ((randn(1, u['in_channels'], frames, side, side), randn(1).abs().clamp(max=1)),
                dict(y=randn(1, 77, u['clip_text_in_channels']),
                     pooled=randn(1, u['clip_text_pooled_in_channels'])))
    side = pixels // 8
    return ((randn(1, cfg['in_channels'], frames, side, side),
             torch.zeros(1, dtype=torch.long, device=device) + 500,
             torch.zeros(1, dtype=torch.long, device=device)), {})


def build(cfg: dict, pixels: int):
    import mmsora.models  # noqa: F401
    from mmsora.registry import MODELS
    cfg = dict(cfg)
    if cfg['type'] == 'VideoDiT':
        cfg['input_size'] = pixels // 8
    return MODELS.build(cfg)


class _SavedBytes:
    """Bytes autograd saves for backward, as a GPU step with fused attention keeps them.

    Parameters (and views of them) are not activations and are left out. Attention is
    counted as flash / memory-efficient SDPA keeps it (q, k, v and the output, not the
    T x T probabilities that the meta device's math path would save).
    """

    def __init__(self, model):
        # Storages identify weights and their views (meta tensors have no data pointer).
        self.param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
        self.bytes = 0
        self.in_sdpa = 0

    def pack(self, t):
        if not self.in_sdpa and t.untyped_storage()._cdata not in self.param_storages:
            self.bytes += t.numel() * t.element_size()
        return t

    def sdpa(self, orig):
        def fused(q, k, v, *args, **kwargs):
            self.in_sdpa += 1
            try:
                out = orig(q, k, v, *args, **kwargs)
            finally:
                self.in_sdpa -= 1
            if torch.is_grad_enabled():
                self.bytes += sum(x.numel() * x.element_size() for x in (q, k, v, out))
            return out
        return fused


def count_step(cfg: dict, kind: str, pixels: int, frames: int = 16) -> dict:
    """FLOPs and saved-activation bytes of one clip's training step, on the meta device."""
    from unittest import mock

    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device('meta'):
        model = build(cfg, pixels)
        args, kwargs = step_inputs(cfg, kind, pixels, frames, device='meta')
        fwd = FlopCounterMode(display=False)
        with fwd, torch.no_grad():
            model(*args, **kwargs)
        saved = _SavedBytes(model)
        step = FlopCounterMode(display=False)
        with step, torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t), \
                mock.patch.object(F, 'scaled_dot_product_attention',
                                  saved.sdpa(F.scaled_dot_product_attention)):
            model(*args, **kwargs).float().square().mean().backward()
    return dict(params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                trainable_m=sum(p.numel() for p in model.parameters()
                                if p.requires_grad) / 1e6,
                fwd_tflops=fwd.get_total_flops() / 1e12,
                step_tflops=step.get_total_flops() / 1e12,
                saved_gb=saved.bytes / 1e9)



def measure_step(name: str, pixels: int, frames: int, steps: int) -> dict:
    """Seconds per training step (wall and process CPU time) and peak-RSS growth
    during the steps (from a peak reset right before them; nan without ``/proc``).

    On a shared machine the CPU time (one torch thread) is the steadier figure: it does
    not count the time the process waits for a core.
    """
    torch.manual_seed(0)
    cfg, kind = model_configs(scaled=True)[name]
    model = build(cfg, pixels).train()
    args, kwargs = step_inputs(cfg, kind, pixels, frames)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-4, weight_decay=0.0)

    def step():
        loss = model(*args, **kwargs).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # (the model's building may have peaked higher; without /proc rss_mb is nan)
    was_reset = reset_peak_rss()
    rss_before = rss_mb()
    step()  # warm-up (also allocates the optimizer state)
    wall, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak, source = peak_rss_figure(was_reset)
    return dict(step_s=sorted(wall)[len(wall) // 2], step_s_all=wall,
                step_cpu_s=sorted(cpu)[len(cpu) // 2], step_cpu_s_all=cpu,
                peak_rss_growth_mb=peak - rss_before, peak_rss_source=source)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--pixels', type=int, nargs='+', default=[256, 512, 1024])
    parser.add_argument('--frames', type=int, default=16)
    parser.add_argument('--measure', action='store_true', help='also time scaled models '
                        'on this CPU (each in its own process)')
    parser.add_argument('--measure-pixels', type=int, default=256)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print('RESULT ' + json.dumps(measure_step(args.worker, args.measure_pixels,
                                                  args.frames, args.steps)), flush=True)
        return
    print(f'Counted (meta device), one {args.frames}-frame clip, fp32:')
    for scaled in (False, True):
        sizes = [args.measure_pixels] if scaled else args.pixels
        for pixels in sizes:
            for name, (cfg, kind) in model_configs(scaled).items():
                c = count_step(cfg, kind, pixels, args.frames)
                print(f"  {'scaled ' if scaled else ''}{name:42s} {pixels:5d}px  params "
                      f"{c['params_m']:8.1f} M (trainable {c['trainable_m']:7.1f} M)  fwd "
                      f"{c['fwd_tflops']:8.3f} TFLOP  step {c['step_tflops']:8.3f} TFLOP  "
                      f"saved {c['saved_gb']:7.2f} GB", flush=True)
    if not args.measure:
        return
    print(f'Measured on CPU ({torch.get_num_threads()} threads), scaled models, '
          f'{args.measure_pixels}px, median of {args.steps} steps:')
    for name in model_configs(scaled=True):
        cmd = [sys.executable, __file__, '--worker', name, '--frames', str(args.frames),
               '--measure-pixels', str(args.measure_pixels), '--steps', str(args.steps)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout
        r = json.loads(out.split('RESULT ', 1)[1])
        print(f"  scaled {name:42s} step CPU {r['step_cpu_s']:.2f} s "
              f"(all {[round(s, 2) for s in r['step_cpu_s_all']]}), wall "
              f"{r['step_s']:.2f} s  peak RSS growth {r['peak_rss_growth_mb']:.0f} MB",
              flush=True)


if __name__ == '__main__':
    main()
