"""Score samples made elsewhere: ``python tools/score_samples.py SAMPLES.npz --evaluation FILE``.

SAMPLES.npz holds the samples as ``arr_0``, uint8 NHWC pictures or NTHWC clips: what
``tools/infer.py --out`` and ``tools/test.py --out`` write, and what DiT's and SiT's
``sample_ddp.py`` and ADM's evaluator use. The metrics of the evaluation section
(FID / IS / FVD / CLIP score; docs/evaluation.md) are computed over its samples as
tools/test.py computes them over a model's: the same numbers for the same samples.

Examples:
    # FID-50K (and IS) of a DiT sample_ddp.py file
    python tools/score_samples.py DiT-XL-2-...-cfg-1.5-seed-0.npz \
        --evaluation configs/_base_/evaluation/fid50k_imagenet256.py
    # CLIP score: each sample's prompt, in sample order
    python tools/score_samples.py clips.npz --prompt-file prompts.txt \
        --evaluation configs/_base_/evaluation/clip_score_t2v.py
"""
import json
import os.path as osp
import sys
import zipfile

from mmsora.utils.cli import (ArgumentParser, UserError, check_at_least, check_output_path, plural,
                              run_cli)


def parse_args(argv=None):
    parser = ArgumentParser(description='Score samples saved as an .npz (arr_0) with the '
                            'metrics of an evaluation section')
    parser.add_argument('samples', help='.npz holding the samples as arr_0 (uint8 NHWC '
                        'pictures or NTHWC clips)')
    parser.add_argument('--evaluation', required=True, help='config file with the '
                        'evaluation section, e.g. configs/_base_/evaluation/'
                        'fid50k_imagenet256.py')
    parser.add_argument('--num-samples', type=int, help='score the first N samples '
                        '(default: all of arr_0)')
    parser.add_argument('--batch-size', type=int, help='samples per batch through the '
                        "metrics' networks (default: the section's batch_size, else 64)")
    parser.add_argument('--prompt-file', help="each sample's prompt, one a line, in "
                        'sample order (blank lines and lines starting with # skipped), '
                        'cycled; CLIP score needs them (default: the section\'s prompts)')
    parser.add_argument('--json', help='write the metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override entries of the file, e.g. '
                        'evaluation.metrics.0.reference=ref.npz')
    return parser.parse_args(argv)


def read_samples(path: str):
    """``arr_0`` of ``path`` (memory-mapped where it is stored uncompressed) and
    ``arr_1`` (the labels) where the file has one per sample; every fault in one line."""
    import numpy as np

    from mmsora.evaluation.metrics.frechet import npz_array
    if not osp.isfile(path):
        raise UserError(f'{path}: no such file' if not osp.isdir(path) else
                        f'{path} is a folder; give the .npz of the samples (a folder of '
                        'pictures: tools/make_reference.py packs it)')
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[:-4] for n in archive.namelist() if n.endswith('.npy')]
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f'{path} is not an .npz file ({e})') from None
    if 'arr_0' not in names:
        raise UserError(f'{path} has no arr_0 (the samples); it has {sorted(names)}')
    try:
        samples = npz_array(path, 'arr_0')
    except Exception as e:  # a damaged member
        raise UserError(f'{path}: arr_0 cannot be read ({e})') from None
    if samples.dtype != np.uint8 or samples.ndim not in (4, 5) or samples.shape[-1] != 3:
        raise UserError(f'{path}: arr_0 is {samples.dtype} {tuple(samples.shape)}; the '
                        'samples are uint8 pictures (N, H, W, 3) or clips (N, T, H, W, 3), '
                        'as tools/infer.py --out saves them')
    labels = None
    if 'arr_1' in names:
        found = np.load(path)['arr_1']
        if found.ndim == 1 and len(found) == len(samples):
            labels = [int(y) for y in found]
    return samples, labels


def evaluation_of(args) -> dict:
    """The evaluation section of --evaluation, with --cfg-options over it."""
    from mmsora.utils.cfg_options import apply_cfg_options
    from mmsora.utils.config_loading import load_config
    cfg = load_config(args.evaluation)
    apply_cfg_options(cfg, args.cfg_options, schedule_note=False)
    evaluation = cfg.get('evaluation')
    if not evaluation or not evaluation.get('metrics'):
        raise UserError(f'{args.evaluation} has no `evaluation` section with metrics; '
                        'give one of configs/_base_/evaluation/ (docs/evaluation.md)')
    return dict(evaluation)


def score(samples, metrics, batch_size: int, labels=None, prompts=None,
          progress: bool = True) -> dict:
    """``metrics`` (configs) over ``samples`` (uint8 NHWC or NTHWC, all of them), fed
    in batches as mass sampling feeds a model's: metric name -> value."""
    import numpy as np
    from tqdm import tqdm

    from mmsora.apis.evaluation import build_evaluator, check_metric_inputs, prepare_metrics
    from mmsora.evaluation.metrics.clip_score import CLIPScore
    evaluator = build_evaluator(metrics)
    check_metric_inputs(evaluator, len(samples), tuple(samples.shape[1:-1]))
    if not prompts and any(isinstance(m, CLIPScore) for m in evaluator.metrics):
        raise UserError("CLIPScore scores each sample against its prompt: give them with "
                        '--prompt-file FILE (one a line, in sample order)')
    prepare_metrics(evaluator)
    for start in tqdm(range(0, len(samples), batch_size), disable=not progress,
                      desc=f'scoring {len(samples)}'):
        batch = np.array(samples[start:start + batch_size])
        evaluator.process(data_samples=[
            dict(index=start + j, sample=s, label=labels[start + j] if labels else None,
                 prompt=prompts[(start + j) % len(prompts)] if prompts else None)
            for j, s in enumerate(batch)])
    return evaluator.evaluate(len(samples))


def main(argv=None):
    args = parse_args(argv)
    check_at_least(args, ('num_samples', 'batch_size'))
    check_output_path(args.json, '--json')  # before the scoring, not after it
    from mmengine.registry import init_default_scope
    init_default_scope('mmsora')
    samples, labels = read_samples(args.samples)
    evaluation = evaluation_of(args)
    prompts = evaluation.get('prompts')
    if args.prompt_file:
        from mmsora.apis.inference import read_prompt_file
        prompts = read_prompt_file(args.prompt_file)
    n = len(samples)
    if args.num_samples is not None:
        if args.num_samples > n:
            raise UserError(f'--num-samples {args.num_samples}: {args.samples} holds '
                            f'{plural(n, "sample")}')
        n = args.num_samples
    elif evaluation.get('num_samples', n) != n:  # (FID-50K of 10K samples is another
        print(f'note: {args.evaluation} scores {evaluation["num_samples"]} samples; '  # FID)
              f'{args.samples} holds {n}: scoring {n}', flush=True)
    batch_size = args.batch_size or evaluation.get('batch_size') or 64
    # (the metrics' checks, a reference of another size or too few samples, are
    # ValueErrors: one line under run_cli)
    metrics = score(samples[:n], evaluation['metrics'], batch_size, labels and labels[:n],
                    prompts)
    for key, value in metrics.items():
        print(f'{key}: {value:.4f}')
    if args.json:
        from mmsora.apis.evaluation import metric_configs
        with open(args.json, 'w') as f:
            json.dump(dict(metrics=dict(metrics), samples=osp.abspath(args.samples),
                           num_samples=n, evaluation=args.evaluation,
                           metric_configs=metric_configs(evaluation)),
                      f, indent=2, default=str)


if __name__ == '__main__':
    sys.exit(run_cli(main))
