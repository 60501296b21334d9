"""Sample from a trained model: ``python tools/infer.py CONFIG_OR_WORK_DIR [options]``.

Examples:
    # the newest checkpoint of a run, EMA weights, 8 samples of classes 0..3
    python tools/infer.py work_dirs/dit_tiny2_1xb64_3k_shapes16 --out samples.png
    # a released DiT checkpoint with a local SD VAE
    python tools/infer.py configs/dit/dit_xl2_8xb32_400k_imagenet256.py \
        --checkpoint DiT-XL-2-256x256.pt --labels 207 360 387 974 \
        --cfg-options model.vae.pretrained_path=checkpoints/sd-vae-ft-ema
"""
import argparse
import sys

import torch

from mmsora.utils.cli import UserError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Sample pictures from an mmsora model')
    parser.add_argument('run', help='config file, or a work dir made by tools/train.py')
    parser.add_argument('--checkpoint', help='checkpoint (default: the newest in the work '
                        'dir); mmengine, original DiT and fast-DiT files are accepted')
    parser.add_argument('--labels', type=int, nargs='+',
                        help='class ids to sample (default: cycle through the classes)')
    parser.add_argument('--num-samples', type=int, default=None,
                        help='number of samples (default: len(--labels), else 16)')
    parser.add_argument('--seed', type=int, default=0,
                        help='sample i uses seed SEED + i, whatever the batch size')
    parser.add_argument('--sampler', help="'ddpm', 'ddim' or a diffusers scheduler name "
                        "(DPMSolverMultistepScheduler, EulerDiscreteScheduler, ...); "
                        "default: the config's sample_cfg")
    parser.add_argument('--steps', type=int, help='number of sampling steps')
    parser.add_argument('--cfg-scale', type=float, help='classifier-free guidance scale '
                        '(1 = none)')
    parser.add_argument('--eta', type=float, default=0.0, help="DDIM's eta")
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--no-ema', action='store_true', help='use the raw, not EMA, weights')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--out', default='samples.png', help='output PNG grid')
    parser.add_argument('--nrow', type=int, default=8, help='pictures per grid row')
    parser.add_argument('--upscale', type=int, default=1,
                        help='enlarge the grid by this integer factor (nearest)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries')
    return parser.parse_args(argv)


def check_args(args, num_classes):
    """Validate values a parser cannot; raise UserError naming the option."""
    for name in ('num_samples', 'steps', 'batch_size', 'nrow', 'upscale'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if args.cfg_scale is not None and args.cfg_scale < 1:
        raise UserError(f'--cfg-scale must be >= 1 (1 disables guidance), got {args.cfg_scale}')
    if not 0 <= args.eta <= 1:
        raise UserError(f'--eta must be in [0, 1], got {args.eta}')
    bad = [y for y in args.labels or [] if not 0 <= y < num_classes]
    if bad:
        raise UserError(f'--labels {bad} out of range: the model has {num_classes} classes')


def main(argv=None):
    args = parse_args(argv)
    from mmsora.apis import init_model, sample_images, save_image_grid
    model, cfg = init_model(args.run, args.checkpoint, device=args.device,
                            cfg_options=args.cfg_options, use_ema=not args.no_ema)
    check_args(args, model.num_classes)
    n = args.num_samples or (len(args.labels) if args.labels else 16)
    pool = args.labels or list(range(model.num_classes))
    labels = [pool[i % len(pool)] for i in range(n)]
    defaults = cfg.get('sample_cfg', {})
    sample_kwargs = dict(
        sampler=args.sampler or defaults.get('sampler', 'ddpm'),
        num_steps=args.steps or defaults.get('num_steps', 250),
        cfg_scale=args.cfg_scale if args.cfg_scale is not None else defaults.get('cfg_scale', 1.0),
        eta=args.eta)
    images = sample_images(model, labels, [args.seed + i for i in range(n)],
                           batch_size=args.batch_size, progress=True, **sample_kwargs)
    save_image_grid(images, args.out, nrow=args.nrow, upscale=args.upscale)
    print(f'saved {n} samples (labels {labels}) to {args.out}')


if __name__ == '__main__':
    sys.exit(run_cli(main))
