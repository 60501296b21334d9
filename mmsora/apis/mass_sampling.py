"""Mass sampling for evaluation (FID-50K and the like), the same on any number of GPUs.

Sample ``i`` has seed ``seed + i`` and label ``labels[i % len(labels)]`` (prompt
likewise), and samples are drawn in fixed global batches ``[k * B, (k + 1) * B)``;
batch ``k`` goes to rank ``k % world_size``. A sample therefore depends neither on the
number of processes nor on which one drew it, and even the batch it is computed in is
the same, so 1 and 8 GPUs give the same pictures and the same metric values. (DiT's
``sample_ddp.py`` seeds each rank instead, which ties the samples to the world size.)

Outputs: the ADM evaluator's ``.npz`` (``arr_0``: uint8 NHWC pictures or (N, T, H, W,
3) clips; ``arr_1``: the labels, as guided-diffusion writes for class-conditional
models, or ``prompts`` for text models), assembled from per-batch shards (a rerun after
a crash keeps the finished batches), one PNG / mp4 per sample, and mmengine metrics fed
batch by batch.
"""
import atexit
import glob
import json
import os
import os.path as osp
import shutil
import sys
import zipfile
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.dist import barrier, get_dist_info
from tqdm import tqdm

from mmsora.apis.inference import check_run_sample_settings, run_sample_settings
from mmsora.utils.atomic_io import atomic_file, atomic_path
from mmsora.utils.cli import Interrupted, UserError, plural
from mmsora.utils.labels import check_label_range

__all__ = ['sample_plan', 'rank_batches', 'to_uint8_samples', 'mass_sample', 'random_labels',
           'init_sampling_processes', 'zip_npy_files', 'sampling_line', 'save_prompts',
           'unscored_samples']


def init_sampling_processes(launcher: str = 'none', device: Optional[str] = None) -> str:
    """Join the process group of a torchrun / slurm launch and pick this rank's device.

    ``launcher='none'`` is one process. On GPUs the group is nccl and rank r uses
    ``cuda:LOCAL_RANK``; on CPU-only machines it is gloo (see mmsora.engine.compat).
    The group this call creates is destroyed when the interpreter exits (without
    waiting for the other processes), unless the script did it before, as
    tools/test.py and tools/infer.py do (``close_process_group``): left to the
    interpreter's shutdown, a gloo process can abort ("terminate called without an
    active exception"), and torchrun then reports the whole run failed.

    Returns:
        str: The device to sample on: ``device`` when it names one (``cpu``,
        ``cuda:1``); ``cuda:LOCAL_RANK`` for None where torch sees a GPU, and for
        ``cuda`` (which ``torch.cuda.set_device`` refuses: tools/test.py --device cuda
        stopped on its ValueError), else ``cpu``.
    """
    if launcher != 'none' and not torch.distributed.is_initialized():
        from mmsora.engine.compat import COLLECTIVE_TIMEOUT_S, init_cpu_distributed
        from mmsora.utils.dist import abandon_process_group
        if not init_cpu_distributed(launcher):
            from mmengine.dist import init_dist
            init_dist(launcher, backend='nccl', timeout=COLLECTIVE_TIMEOUT_S)
        atexit.register(abandon_process_group)
    if device is None or torch.device(device) == torch.device('cuda'):
        device = (f'cuda:{os.environ.get("LOCAL_RANK", "0")}' if torch.cuda.is_available()
                  else 'cpu')
    if device.startswith('cuda'):
        torch.cuda.set_device(torch.device(device))
    return device


def sample_plan(num_samples: int, labels: Optional[Sequence[int]], seed: int = 0,
                prompts: Optional[Sequence[str]] = None):
    """Labels, seeds (and prompts) of samples ``0 .. num_samples - 1``. With prompts
    the labels may be None or empty: a text model's one class, 0, as tools/infer.py
    gives them (its ``range(model.num_classes)``), so the runs' records are alike.
    ``prompts`` as ``sample_images`` takes them (``prompt_list``): one str is one
    caption (it was cut into its characters), a set is refused."""
    from mmsora.models.latent_diffusion import prompt_list
    if num_samples < 1:
        raise ValueError(f'num_samples must be >= 1, got {num_samples}')
    if prompts is not None:  # (prompts=3: 'object of type int has no len()')
        prompts = prompt_list(prompts)
    if prompts is not None and (labels is None or not len(labels)):
        labels = [0]
    if labels is None:
        raise ValueError('labels=None: give the class ids to cycle through (or prompts, '
                         'for a text model)')
    if not len(labels):
        raise ValueError('need at least one label to cycle through')
    check_label_range(labels, None, 'labels', error=ValueError)  # (1.5 was class 1)
    plan = dict(labels=[int(labels[i % len(labels)]) for i in range(num_samples)],
                seeds=[seed + i for i in range(num_samples)])
    if prompts is not None:
        plan['prompts'] = [prompts[i % len(prompts)] for i in range(num_samples)]
    return plan


def rank_batches(num_samples: int, batch_size: int, rank: int, world_size: int):
    """Global batches ``(k, range)`` of this rank: batch k holds indices
    ``[k * batch_size, (k + 1) * batch_size)`` and goes to rank ``k % world_size``."""
    num_batches = (num_samples + batch_size - 1) // batch_size
    return [(k, range(k * batch_size, min((k + 1) * batch_size, num_samples)))
            for k in range(rank, num_batches, world_size)]


def random_labels(num_classes: int, num_samples: int, seed: int) -> list:
    """``num_samples`` classes drawn uniformly, as DiT's and SiT's ``sample_ddp.py``
    draw them (``torch.randint``), here from ``seed`` alone: the same on any number of
    processes (as a pool, :func:`mass_sample` cycles it once)."""
    return np.random.default_rng([seed, 0x1abe1]).integers(
        num_classes, size=num_samples).tolist()


def to_uint8_samples(x: torch.Tensor, indices: Optional[Sequence[int]] = None) -> np.ndarray:
    """Samples in [-1, 1], (N, 3, H, W) or (N, 3, T, H, W) -> uint8 channels-last,
    with DiT's ``sample_ddp.py`` quantisation (``clamp(127.5 x + 128, 0, 255)``).

    NaN would become 0 and inf 255 without a word, and a diverged model would get a
    plausible FID: samples holding NaN or inf are named in one warning line (by
    ``indices``, their global sample indices; default 0 .. N-1). Not refused: an
    evaluation during training would stop the run, and the warnings and the score say
    enough."""
    if x.dim() not in (4, 5):
        raise ValueError(f'expected pictures (N, 3, H, W) or clips (N, 3, T, H, W), got '
                         f'shape {tuple(x.shape)}; latent models need a VAE (model.vae)')
    if x.shape[1] != 3:
        raise ValueError(f'the metrics and the saved samples need 3-channel RGB pictures '
                         f'(N, 3, H, W) or clips (N, 3, T, H, W), but the model gives '
                         f'{x.shape[1]}-channel ones of shape {tuple(x.shape)}'
                         + ('' if x.shape[1] == 1 else
                            ' (latents? latent models need a VAE, model.vae)'))
    x = x.float()
    bad = (~torch.isfinite(x)).flatten(1).any(dim=1).nonzero().flatten().tolist()
    if bad:
        names = [int(indices[k]) if indices is not None else k for k in bad]
        listed = ', '.join(map(str, names[:5])) + (', ...' if len(names) > 5 else '')
        tqdm.write(f'warning: {len(bad)} of {len(x)} samples ({listed}) hold NaN or inf '
                   'values (the model diverged?): they are scored as black / white '
                   'pictures', file=sys.stderr)
    x = torch.clamp(127.5 * x + 128.0, 0, 255).to(torch.uint8)
    return (x.permute(0, 2, 3, 1) if x.dim() == 4 else x.permute(0, 2, 3, 4, 1)).cpu().numpy()


def sampling_line(num_samples: int, settings: dict, random_classes: bool = False) -> str:
    """The line tools/infer.py and tools/test.py print before mass sampling: what an
    FID is scored at (DiT's sample_ddp.py takes cfg 1.5, its sample.py 4.0; the
    config's ``sample_cfg`` chose without a word), e.g. ``sampling 16 samples with
    sampler=ddpm, num_steps=10, cfg_scale=1.5; classes drawn at random from --seed``.

    An unset setting is left out, an option set to None that means something kept
    (SiT's last_step=None: no last step), an adaptive sampler's steps said as such
    (ode_dopri5 printed the config's unused num_steps)."""
    from mmsora.diffusion.transport import Transport
    shown = []
    for key, value in settings.items():
        if key == 'num_steps' and settings.get('sampler') == 'ode_dopri5':
            value = 'adaptive'
        if value is not None or key in Transport.OPTIONS_TAKING_NONE:
            shown.append(f'{key}={value}')
    return (f'sampling {plural(num_samples, "sample")} with {", ".join(shown)}'
            + ('; classes drawn at random from --seed' if random_classes else ''))


def save_prompts(sample_dir: str, prompts: Sequence[str]) -> str:
    """``prompts.txt`` beside a text model's sample files: line i is the prompt of
    sample i (``prompts``: one per sample, in sample order), as ``labels.txt`` gives a
    class model's classes; a line break inside a prompt is written as a space."""
    os.makedirs(sample_dir, exist_ok=True)
    path = osp.join(sample_dir, 'prompts.txt')
    with atomic_file(path, 'w', encoding='utf-8') as f:
        f.writelines(' '.join(str(p).splitlines()) + '\n' for p in prompts)
    return path


def _fingerprint(model, plan, batch_size, sample_kwargs) -> str:
    """What the shards of a run depend on: the plan, the batches, the sampler settings
    and (a checksum of) the weights."""
    weights = None
    if isinstance(model, torch.nn.Module):
        weights = float(sum(p.detach().double().abs().sum().item() for p in model.parameters()))
    return json.dumps(dict(plan=plan, batch_size=batch_size, weights=weights,
                           # (precision None: as before the setting existed)
                           sample_kwargs={k: repr(v) for k, v in sorted(sample_kwargs.items())
                                          if not (k == 'precision' and v is None)}),
                      sort_keys=True)


def _claim_parts_dir(parts_dir: str, fingerprint: str, rank: int) -> None:
    """Make (rank 0) or check the shard folder: shards left by a crashed run are reused
    only by the same run (or by one that only adds samples after them); anything else
    is refused rather than silently mixed in."""
    record = osp.join(parts_dir, 'run.json')
    if rank == 0:
        os.makedirs(parts_dir, exist_ok=True)
        old = _read_record(record)
        grown = old is not None and _grown_from(old, fingerprint)
        if grown:
            _drop_short_last_batch(parts_dir, _parse_record(old))
        if old is None or grown:
            with atomic_file(record, 'w') as f:
                f.write(fingerprint)
    barrier()
    old = _read_record(record)
    if old != fingerprint:
        raise UserError(f'{parts_dir} holds the shards of a different sampling run '
                        f'({_differences(old, fingerprint)}); delete it or choose '
                        'another --out')


def _read_record(record: str) -> Optional[str]:
    """The text of a run's record, or None when there is none yet."""
    if not osp.isfile(record):
        return None
    with open(record) as f:
        return f.read()


def _parse_record(text: str) -> Optional[dict]:
    """A run's record as a dict, or None for one this code cannot read."""
    try:
        run = json.loads(text)
    except (TypeError, ValueError):
        return None
    readable = (isinstance(run, dict) and isinstance(run.get('plan'), dict)
                and isinstance(run['plan'].get('seeds'), list) and run['plan']['seeds']
                and isinstance(run.get('sample_kwargs'), dict))
    return run if readable else None


def _grown_from(old: str, new: str) -> bool:
    """Whether the new run only adds samples after those of the old one: the same
    plan for those, the same batches, settings and weights."""
    old, new = _parse_record(old), _parse_record(new)
    if old is None or new is None or len(old['plan']['seeds']) >= len(new['plan']['seeds']):
        return False
    n = len(old['plan']['seeds'])  # the new plan's first n entries must be the old plan
    return dict(new, plan={k: v[:n] for k, v in new['plan'].items()}) == old


def _drop_short_last_batch(parts_dir: str, old: dict) -> None:
    """After a run grew, its shards stay but for a short last batch: the bigger run
    draws that batch in full, which may change its samples (batched kernels)."""
    n, batch_size = len(old['plan']['seeds']), old['batch_size']
    shard = osp.join(parts_dir, f'batch_{n // batch_size:06d}.npz')
    if n % batch_size and osp.isfile(shard):
        os.remove(shard)


def _differences(old: str, new: str) -> str:
    """What two runs' records differ in, e.g. ``num_steps 250 -> 200``."""
    old, new = _parse_record(old), _parse_record(new)
    if old is None or new is None:
        return 'other settings, labels or weights'
    plans, kwargs = (old['plan'], new['plan']), (old['sample_kwargs'], new['sample_kwargs'])
    pairs = [('num_samples', *(len(p['seeds']) for p in plans)),
             ('seed', *(p['seeds'][0] for p in plans)),
             ('batch_size', old.get('batch_size'), new.get('batch_size'))]
    pairs += [(k, *(kw.get(k, 'unset') for kw in kwargs))
              for k in sorted(set(kwargs[0]) | set(kwargs[1]))]
    found = [f'{name} {a} -> {b}' for name, a, b in pairs if a != b]
    n = min(len(p['seeds']) for p in plans)
    found += [f'other {key}' for key in ('labels', 'prompts')
              if plans[0].get(key, [])[:n] != plans[1].get(key, [])[:n]]
    if old.get('weights') != new.get('weights'):
        found.append('other weights: another checkpoint, or --no-ema')
    return ', '.join(found) or 'other settings, labels or weights'


def _draw(sample_fn, plan: dict, indices: range, sample_kwargs: dict):
    """Sample ``indices`` of the plan, with their seeds and labels (or prompts)."""
    cond = ({'prompts': [plan['prompts'][i] for i in indices]} if 'prompts' in plan
            else {'labels': [plan['labels'][i] for i in indices]})
    return sample_fn(seeds=[plan['seeds'][i] for i in indices], **cond, **sample_kwargs)


class _BadShard(Exception):
    """A shard whose content is not its batch's samples."""


def _kept_samples(shard: str, indices: range) -> Optional[np.ndarray]:
    """The samples of a shard a previous run finished, or None when there is none. A
    shard that cannot be read (cut short by a crash, ...) is named and None returned:
    its batch is sampled again."""
    if not osp.isfile(shard):
        return None
    try:
        return _read_shard(shard, indices)
    except Exception as e:  # also a damaged zip member, ...
        why = str(e) if isinstance(e, _BadShard) else f'{type(e).__name__}: {e}'
        tqdm.write(f'warning: {shard} cannot be read ({why}): sampled again', file=sys.stderr)
        return None


def _read_shard(shard: str, indices: range) -> np.ndarray:
    """The samples of the shard of batch ``indices``; _BadShard when it holds others."""
    if not zipfile.is_zipfile(shard):
        raise _BadShard('not a complete .npz file')
    with np.load(shard) as data:
        if not {'indices', 'samples'} <= set(data.files):
            raise _BadShard(f'holds {sorted(data.files)}, not indices and samples')
        got, samples = data['indices'], data['samples']
    if list(got) != list(indices):
        raise _BadShard(f'not the samples {indices.start} .. {indices.stop - 1}')
    if (samples.dtype != np.uint8 or samples.ndim not in (4, 5)
            or len(samples) != len(indices) or samples.shape[-1] != 3):
        raise _BadShard(f'samples of {samples.dtype} {samples.shape}')
    return samples


def _write_shard(shard: str, indices: range, samples: np.ndarray) -> None:
    """Write a batch's shard under a temporary name, flushed to disk before it is
    renamed: a shard is then whole or absent, even after a power loss. (The folder is
    not synced: a shard whose rename is lost is drawn again, as any missing one.)"""
    with atomic_file(shard, sync_folder=False) as f:
        np.savez(f, indices=np.asarray(indices), samples=samples)


def _save_labels(sample_dir, labels):
    """``labels.txt``: line i is the class of sample i (the file names are DiT's
    ``{i:06d}.png``, which its ``create_npz_from_sample_folder`` reads)."""
    os.makedirs(sample_dir, exist_ok=True)
    path = osp.join(sample_dir, 'labels.txt')
    with atomic_file(path, 'w') as f:
        f.writelines(f'{y}\n' for y in labels)


def _save_files(sample_dir, indices, samples, fps, only_missing=False):
    """One PNG (or mp4) per sample, ``{i:06d}.png`` as DiT's ``sample_ddp.py`` names
    them, each written under a temporary name and renamed (not fsynced: 50K of them,
    and the shards hold the samples); ``only_missing``: leave the files that exist (a
    kept shard's)."""
    from PIL import Image

    from mmsora.utils.video_io import note_odd_padding, write_video
    os.makedirs(sample_dir, exist_ok=True)
    ext = '.png' if samples.ndim == 4 else '.mp4'
    for i, sample in zip(indices, samples):
        name = osp.join(sample_dir, f'{i:06d}{ext}')
        if only_missing and osp.isfile(name):
            continue
        with atomic_path(name, sync=False, sync_folder=False) as tmp:
            if sample.ndim == 3:
                Image.fromarray(sample).save(tmp, format='PNG')
            else:  # (T, H, W, 3) -> write_video's (3, T, H, W) in [-1, 1]
                clip = torch.from_numpy(sample).permute(3, 0, 1, 2).float() / 127.5 - 1
                # (yuv420p: an odd size was refused after a batch had been drawn)
                note_odd_padding(clip.shape[-1], clip.shape[-2], where=sample_dir)
                write_video(tmp, clip, fps, pad_odd=True)


def _assemble_npz(out: str, parts_dir: str, num_samples: int, plan: dict,
                  num_batches: int, keep_record: bool = False):
    """Shards -> one ``.npz`` (arr_0, and arr_1 labels or ``prompts``), through a
    memory-mapped ``.npy`` so that 50K pictures never sit in memory at once.
    ``keep_record``: the samples are still to be scored: the run's record stays in
    ``parts_dir`` as ``scoring.json``, the rest removed, so that a rerun after a crash
    in the scoring knows the ``.npz`` for this run's (:func:`_finished_samples`)."""
    shards = [osp.join(parts_dir, f'batch_{k:06d}.npz') for k in range(num_batches)]
    arr = None
    for shard in shards:
        with np.load(shard) as data:
            if arr is None:
                arr = np.lib.format.open_memmap(
                    osp.join(parts_dir, 'arr_0.npy'), mode='w+', dtype=np.uint8,
                    shape=(num_samples, *data['samples'].shape[1:]))
            arr[data['indices']] = data['samples']
    arr.flush()
    del arr
    if 'prompts' in plan:  # a text model: its prompts (a unicode array, no pickle)
        second = 'prompts.npy'
        np.save(osp.join(parts_dir, second), np.asarray(plan['prompts'], dtype=str))
    else:
        second = 'arr_1.npy'
        np.save(osp.join(parts_dir, second), np.asarray(plan['labels'], dtype=np.int64))
    zip_npy_files(out, {name: osp.join(parts_dir, name) for name in ('arr_0.npy', second)})
    if not keep_record:
        shutil.rmtree(parts_dir)
        return
    # (a crash before this: the rerun finds every shard and writes out again)
    with atomic_path(osp.join(parts_dir, 'scoring.json')) as tmp:
        shutil.copyfile(osp.join(parts_dir, 'run.json'), tmp)
    for name in os.listdir(parts_dir):
        if name != 'scoring.json':
            os.remove(osp.join(parts_dir, name))


def unscored_samples(out: str) -> bool:
    """Whether ``out`` is a finished ``.npz`` whose scoring did not finish (its run's
    record kept in ``{out}.parts``): :func:`mass_sample` scores it again without
    sampling when it is the same run's, and refuses it otherwise."""
    return osp.isfile(out) and osp.isfile(osp.join(f'{out}.parts', 'scoring.json'))


def _finished_samples(out: str, parts_dir: str, fingerprint: str, num_samples: int):
    """The samples (arr_0, memory-mapped) of a finished ``.npz`` whose scoring did not
    finish (a crash, Ctrl-C, an out-of-memory reading the reference: its record is
    kept until the metrics are computed: ``scoring.json``), when they are this run's;
    else UserError. None when ``out`` is not such a file."""
    if not unscored_samples(out):
        return None
    record = _read_record(osp.join(parts_dir, 'scoring.json'))
    if record != fingerprint:
        differ = _differences(record, fingerprint)
        raise UserError(f'{out} holds the samples of another run ({differ}): they are not '
                        f'sampled over; delete it and {parts_dir}, or give another --out')
    from mmsora.evaluation.metrics.frechet import npz_array
    samples = npz_array(out, 'arr_0')
    if len(samples) != num_samples:  # (not written by this code)
        raise UserError(f'{out} holds {len(samples)} samples, its record in {parts_dir} '
                        f'{num_samples}: delete both, or give another --out')
    return samples


def zip_npy_files(out: str, files: Dict[str, str]) -> str:
    """Pack ``.npy`` files into an ``.npz`` (what ``np.load`` reads) without loading
    them, written under a temporary name and renamed when complete."""
    # (Not fsynced, as before; a power loss just after the shards are removed can
    # lose it: see tests/test_evaluation/test_mass_sampling.py's count of fsyncs.)
    with atomic_file(out, sync=False, sync_folder=False) as f:
        with zipfile.ZipFile(f, 'w', zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, path in files.items():
                zf.write(path, name)
    return out


@torch.no_grad()
def mass_sample(model, num_samples: int, labels: Optional[Sequence[int]], seed: int = 0,
                batch_size: int = 16, prompts: Optional[Sequence[str]] = None,
                out: Optional[str] = None, sample_dir: Optional[str] = None,
                evaluator=None, fps: float = 8, progress: bool = True,
                sample_fn: Optional[Callable] = None, **sample_kwargs) -> Dict:
    """Draw ``num_samples`` samples over all ranks; save them and / or evaluate them.

    Every rank calls this with the same arguments (under torchrun, after the process
    group is initialised; alone it is world size 1).

    Args:
        model: A ``LatentDiffusion`` (anything with its ``sample``) in eval mode.
        num_samples (int): Samples in all.
        labels (Sequence[int], optional): Class ids, cycled: sample i has
            ``labels[i % len]`` (ignored when ``prompts`` are given: None will do).
        seed (int): Sample i uses seed ``seed + i``.
        batch_size (int): Size B of the fixed batches; each batch is drawn whole by
            one process, so B is what one process holds in memory at a time.
        prompts (Sequence[str], optional): Prompts of a text model, cycled like the
            labels and passed to ``model.sample(prompts=...)``.
        out (str, optional): The ``NAME.npz`` to write (ADM layout; another name is
            refused, as tools/infer.py samples into --out NAME.npz); its shards sit in
            ``{out}.parts/`` (on a file system all ranks share) until it is complete.
            A rerun keeps them, also one that only asks for more samples; a shard
            that cannot be read is named and sampled again. With an ``evaluator``, the
            run's record (``run.json``, kept as ``scoring.json``) stays until the
            metrics are computed: a rerun after a crash in the scoring scores the
            ``.npz`` it finds (when it is this run's) without sampling again. Ctrl-C
            says what is kept (:class:`~mmsora.utils.cli.Interrupted`).
        sample_dir (str, optional): Also write one PNG (pictures) or mp4 (clips) per
            sample: ``{index:06d}.png`` (``.mp4``), the names DiT's ``sample_ddp.py``
            writes, and ``labels.txt`` (line i: sample i's class) or, for a text
            model, ``prompts.txt`` (line i: sample i's prompt; :func:`save_prompts`).
            A rerun writes those of the kept shards that are missing.
        evaluator: An mmengine ``Evaluator`` (or metric) fed each batch as
            ``data_samples``: dicts with ``index``, ``sample`` (uint8, channels last),
            ``label`` and ``prompt``.
        fps (float): Frame rate of written mp4 files.
        progress (bool): Progress bar on rank 0.
        sample_fn (callable, optional): Replaces ``model.sample`` (called as
            ``sample_fn(seeds=..., labels=...)`` or ``(seeds=..., prompts=...)``).
        **sample_kwargs: Passed to ``model.sample`` (sampler, num_steps, cfg_scale, ...),
            over the run's ``sample_cfg`` of a model from init_model
            (``run_sample_settings(model, sample_kwargs)``, the merge of
            :func:`~mmsora.apis.inference.sample_images`: a setting None leaves the
            run's, or the model's default; kept as None in the run's record,
            ``keep_unset=True``): ``mass_sample(model, ...)`` draws what
            ``tools/infer.py --out NAME.npz`` saves for the same seeds. (Before, the
            objective's defaults: DDPM, 250 steps, no guidance.) Judged as
            ``sample_images`` judges them (``check_run_sample_settings``) before
            anything is written. Without a model (``model=None``, a ``sample_fn``),
            passed to ``sample_fn`` as given, None included, ``precision`` and
            ``cfg_scale`` judged by ``LatentDiffusion.sample``'s rules first.

    Returns:
        dict: ``metrics`` (the evaluator's result, or None) and ``out``.
    """
    if out is not None and not str(out).endswith('.npz'):  # (an .npz archive under
        # the name given, without a word)
        raise ValueError(f'out={out!r}: mass_sample writes one .npz archive (ADM layout): '
                         "give out='NAME.npz' (and sample_dir=DIR for one PNG / mp4 a "
                         'sample)')
    rank, world_size = get_dist_info()
    plan = sample_plan(num_samples, labels, seed, prompts)
    # The run's record keeps the settings given as None (the keys of tools/infer.py's
    # records); the sampling takes sample_images' merge, None: the run's setting (a
    # cfg_scale=None the run does not set reached model.sample and was refused),
    # judged as sample_images judges it before anything is written (a NaN cfg_scale
    # was refused after the run's record was, which refused the corrected rerun)
    recorded = run_sample_settings(model, sample_kwargs, keep_unset=True)
    merged = run_sample_settings(model, sample_kwargs)
    check_run_sample_settings(model, merged)
    # Without a model no run setting stands behind None: a sample_fn of one's own gets
    # the settings as given (None may be one of its values, as SiT's last_step=None),
    # once precision and cfg_scale have passed LatentDiffusion.sample's rules (above)
    sample_kwargs = merged if model is not None else dict(sample_kwargs)
    sample_fn = sample_fn or model.sample
    parts_dir = f'{out}.parts' if out else None
    finished = None  # the samples of a finished out still to be scored
    if parts_dir:
        fingerprint = _fingerprint(model, plan, batch_size, recorded)
        finished = _finished_samples(out, parts_dir, fingerprint, num_samples)
        barrier()  # (every process has looked before rank 0 writes a record)
        if finished is None:
            _claim_parts_dir(parts_dir, fingerprint, rank)
        elif rank == 0:
            print(f'{out} holds the {plural(num_samples, "sample")} of this run: scoring '
                  'them', flush=True)
    if sample_dir and rank == 0:  # (after the run's checks: a refused rerun kept the
        # files' own list)
        if prompts is None:
            _save_labels(sample_dir, plan['labels'])
        else:
            save_prompts(sample_dir, plan['prompts'])
    batches = rank_batches(num_samples, batch_size, rank, world_size)
    # A model whose sampling is collective (an FSDP-sharded one, which gathers its
    # weights in every forward: ShardedSampler) needs every process in every batch:
    # the ranks with fewer batches draw the first one again and drop it.
    collective = getattr(model, 'sample_is_collective', False)
    if collective and parts_dir:
        raise ValueError('a collective sampler does not resume from parts: run it '
                         'without out')
    num_batches = -(-num_samples // batch_size)
    idle = -(-num_batches // world_size) - len(batches) if collective else 0
    if parts_dir and rank == 0 and finished is None:  # a rerun after a crash: what it
        kept = _kept_shards(parts_dir)                  # keeps, in one line
        if kept:
            print(f'resuming: {kept} of {num_batches} batches of {batch_size} already '
                  f'sampled in {parts_dir}', flush=True)
    try:
        for k, indices in tqdm(batches, disable=not progress or rank != 0,
                               desc=f'{"scoring" if finished is not None else "sampling"} '
                                    f'{num_samples} (rank 0 of {world_size})'):
            shard = (osp.join(parts_dir, f'batch_{k:06d}.npz')
                     if parts_dir and finished is None else None)
            batch_labels = [plan['labels'][i] for i in indices]
            batch_prompts = ([plan['prompts'][i] for i in indices] if prompts is not None
                             else None)
            if finished is not None:
                samples = np.array(finished[indices.start:indices.stop])
            else:
                samples = _kept_samples(shard, indices) if shard else None
            from_shard = samples is not None
            if not from_shard:
                samples = to_uint8_samples(_draw(sample_fn, plan, indices, sample_kwargs),
                                           indices)
            if sample_dir:  # before the shard, so a kept shard's files exist (but see
                # below). A kept shard of a run without this sample_dir: its missing files.
                _save_files(sample_dir, indices, samples, fps, only_missing=from_shard)
            if shard and not from_shard:
                _write_shard(shard, indices, samples)
            if evaluator is not None:
                evaluator.process(data_samples=[
                    dict(index=i, sample=s, label=y,
                         prompt=batch_prompts[j] if batch_prompts else None)
                    for j, (i, s, y) in enumerate(zip(indices, samples, batch_labels))])
        for _ in range(idle):
            _draw(sample_fn, plan, range(min(batch_size, num_samples)), sample_kwargs)
        barrier()
        if out and rank == 0 and finished is None:
            _assemble_npz(out, parts_dir, num_samples, plan, num_batches,
                          keep_record=evaluator is not None)
        metrics = evaluator.evaluate(num_samples) if evaluator is not None else None
    except KeyboardInterrupt as e:  # Ctrl-C (torchrun passes it to every process)
        if isinstance(e, Interrupted) or not parts_dir:
            raise
        raise Interrupted(_kept_in_words(out, parts_dir, num_batches, num_samples),
                          quiet=rank != 0) from None
    barrier()
    if parts_dir and rank == 0 and osp.isdir(parts_dir):  # scored: the record is done
        shutil.rmtree(parts_dir)
    return dict(metrics=metrics, out=out)


def _kept_shards(parts_dir: Optional[str]) -> int:
    """The finished shards in ``parts_dir`` (0 without one)."""
    if not parts_dir:
        return 0
    return sum(not p.endswith('.tmp.npz')  # (the temporary names of earlier versions)
               for p in glob.glob(osp.join(parts_dir, 'batch_*.npz')))


def _kept_in_words(out: str, parts_dir: str, num_batches: int, num_samples: int) -> str:
    """What an interrupted run keeps, and how to go on (``interrupted (...)``)."""
    if osp.isfile(osp.join(parts_dir, 'scoring.json')):  # sampled; stopped in the scoring
        return (f'({plural(num_samples, "sample")} kept in {out}: run the same command '
                'to score them)')
    return (f'({_kept_shards(parts_dir)} of {num_batches} batch{"es" * (num_batches != 1)} '
            f'kept in {parts_dir}: run the same command to go on)')
