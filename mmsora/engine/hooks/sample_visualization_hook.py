"""Sample a few pictures or clips during training and show them through mmengine's
visualizer (as DiT / Latte users watch samples improve while a run goes).

Every ``interval`` iterations the hook draws ``num_samples`` samples with fixed seeds
(so successive sets differ by the weights only), from the EMA weights when EMAHook
runs, and

* logs one picture through ``runner.visualizer.add_image`` — a grid of the pictures,
  or for clips a filmstrip (one row per clip, one column per frame) — so every
  configured backend gets it: ``LocalVisBackend`` writes PNGs under the run's
  ``vis_data/vis_image/``, ``TensorboardVisBackend`` and ``WandbVisBackend`` show it;
* for clips also writes H.264 mp4s (and GIFs on request) under
  ``{log_dir}/samples/iter_{N}/``, since image backends cannot play video (an odd width
  or height is padded by one row / column of edge pixels: H.264 needs an even size).

A sample that cannot be saved (a full disk, a backend's error), or drawn for want of a
folder that training never loads (``model.vae``'s, the text encoder's), is a warning
in the log, never the end of the training run; another file not found while drawing
them (the run's own, a bug's) stops it as any other error does. ``LocalVisBackend``
ignores what its ``cv2.imwrite`` says (False; and OpenCV itself misses a failed close,
which a full disk makes of a small PNG's only write), so the hook checks the PNG that
backend was to write: written by this call, and whole (ending with its IEND chunk).
The first one missing is a warning line naming the file, once a run of each hook (the
disk stays full); the line closing each sampling says which pictures were not written
(its 'logged to the visualizer' is true of the other backends only). Tensorboard's
and WandB's backends write no file of theirs to check.

Only the main process samples (under FSDP every process does, as the sharded model's
all-gathers need them all, and the main one logs); the global RNG states are restored
afterwards so that sampling never changes the training noise (and exact resume still
holds).
"""
import os
import os.path as osp
import re
from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.visualization import LocalVisBackend

from mmsora.registry import HOOKS
from .rng_state_hook import get_rng_states, set_rng_states
from .sampling_model import ShardedSampler, sampling_model

__all__ = ['SampleVisualizationHook', 'filmstrip']

_PNG_END = b'\x00\x00\x00\x00IEND\xaeB`\x82'  # a PNG's last chunk: empty, and its CRC


def _file_state(path: str):
    """What a write of ``path`` changes (None: there is no such file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _local_pictures(visualizer, name: str, step: int) -> list:
    """The PNGs that ``visualizer.add_image(name, image, step)`` has mmengine's
    ``LocalVisBackend`` write (a subclass with its own ``add_image`` is not checked)."""
    backends = getattr(visualizer, '_vis_backends', {})  # (mmengine lists them nowhere else)
    return [osp.join(b.experiment._img_save_dir, f'{name}_{step}.png')
            for b in backends.values()
            if getattr(type(b), 'add_image', None) is LocalVisBackend.add_image]


def _picture_written(path: str, before) -> bool:
    """Whether the PNG ``path`` was written since its :func:`_file_state` was ``before``
    and is whole: a full disk leaves it empty or cut short, without its IEND chunk."""
    if _file_state(path) in (None, before):
        return False
    try:
        with open(path, 'rb') as f:
            f.seek(-len(_PNG_END), os.SEEK_END)
            return f.read() == _PNG_END
    except OSError:  # (shorter than the chunk, or unreadable)
        return False


def _model_folders(model) -> list:
    """The folders of ``model.vae`` and ``model.text_encoder`` as given (their
    ``pretrained_path``): training never loads them, the samples are the first to."""
    parts = (getattr(model, name, None) for name in ('vae', 'text_encoder'))
    return [os.fspath(p) for p in (getattr(part, 'pretrained_path', None) for part in parts)
            if isinstance(p, (str, os.PathLike)) and os.fspath(p)]


def _under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it."""
    path, folder = osp.abspath(path), osp.abspath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _model_folder_error(model, error: FileNotFoundError) -> bool:
    """Whether ``error``, met while sampling, is about one of the model's folders
    (:func:`_model_folders`): the file it did not find lies in one of them (its
    ``filename``); or it names no file and its line names one of them, as the loaders'
    own lines do ('VAE folder ... does not exist', '... has no config.json', '... no
    weights')."""
    folders = _model_folders(model)
    files = [f for f in (error.filename, error.filename2) if isinstance(f, (str, bytes))]
    if files:
        return any(_under(os.fsdecode(f), folder) for f in files for folder in folders)
    said = str(error)
    for folder in folders:
        for name in {folder.rstrip(os.sep) or folder, osp.abspath(folder)}:
            # the folder as a whole name: '/x/vae' or '/x/vae/sub', never '/x/vae2'
            if re.search(r'(?<![\w.~/-])' + re.escape(name) + r'(?![\w.~-])', said):
                return True
    return False


def filmstrip(samples: torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """One uint8 (H', W', 3) picture of samples in [-1, 1].

    Pictures (N, 3, H, W) are laid out ``nrow`` per row; clips (N, 3, T, H, W) one per
    row, frames left to right.
    """
    x = ((samples.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.dim() == 4:
        n, _, h, w = x.shape
        cols, rows = min(nrow, n), -(-n // min(nrow, n))
        tiles = [x[i] if i < n else torch.zeros_like(x[0]) for i in range(rows * cols)]
        grid = torch.stack(tiles).view(rows, cols, 3, h, w)
    elif x.dim() == 5:
        grid = x.permute(0, 2, 1, 3, 4)  # (N, T, 3, H, W): rows = clips, cols = frames
    else:
        raise ValueError(f'expected (N, 3, H, W) or (N, 3, T, H, W) samples, got '
                         f'{tuple(x.shape)}')
    rows, cols, _, h, w = grid.shape
    out = torch.zeros(3, rows * (h + pad) + pad, cols * (w + pad) + pad, dtype=torch.uint8)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
            out[:, y0:y0 + h, x0:x0 + w] = grid[r, c]
    return out.permute(1, 2, 0).numpy()


@HOOKS.register_module()
class SampleVisualizationHook(Hook):
    """Sample every ``interval`` iterations and log the samples to the visualizer.

    Args:
        interval (int): Sample every this many training iterations.
        num_samples (int): Samples per round.
        seed (int): Sample i uses seed ``seed + i`` every round.
        labels (Sequence[int], optional): Classes to cycle through (class models);
            default ``0, 1, 2, ...`` up to the model's number of classes.
        prompts (Sequence[str], optional): Prompts to cycle through (text models;
            required for them); one str is one prompt, a set is refused (its order
            changes from one process to the next).
        sample_cfg (dict, optional): Sampler settings over the config's ``sample_cfg``
            (``sampler``, ``num_steps``, ``cfg_scale``, ``fps``), for these samples
            alone: the SiT-XL/2 config's hook draws with ``sampler='ode_dopri5'``, as
            SiT's train.py, where tools/infer.py keeps its 250 SDE steps.
        use_ema (bool): Sample with EMAHook's averaged weights when it runs.
        gif (bool): Also write a GIF beside each mp4.
        at_end (bool): Also sample after the last iteration.
    """

    priority = 'LOW'  # after EMAHook has updated the averaged weights

    def __init__(self, interval: int = 5000, num_samples: int = 4, seed: int = 0,
                 labels: Optional[Sequence[int]] = None,
                 prompts: Optional[Sequence[str]] = None,
                 sample_cfg: Optional[dict] = None, use_ema: bool = True,
                 gif: bool = False, at_end: bool = True):
        if interval < 1 or num_samples < 1:
            raise ValueError(f'SampleVisualizationHook needs interval >= 1 and '
                             f'num_samples >= 1, got {interval} and {num_samples}')
        self.interval, self.num_samples, self.seed = interval, num_samples, seed
        self.labels = list(labels) if labels is not None else None
        self.prompts = None
        if prompts is not None:  # (one str was cut into its characters, a set taken)
            from mmsora.models.latent_diffusion import prompt_list
            try:
                self.prompts = prompt_list(prompts)
            except ValueError as e:  # (at the run's start, not at its first sampling)
                raise ValueError(f'SampleVisualizationHook: {e}') from None
        self.sample_cfg = dict(sample_cfg or {})
        self.use_ema, self.gif, self.at_end = use_ema, gif, at_end
        self._last = None
        self._picture_lost = False  # (said once a run: a full disk stays full)

    def _conditions(self, model):
        n = self.num_samples
        if model.text_conditioned:
            if not self.prompts:
                raise ValueError('SampleVisualizationHook: this model is text-conditioned; '
                                 'give prompts=[...]')
            return None, [self.prompts[i % len(self.prompts)] for i in range(n)]
        pool = self.labels or list(range(model.num_classes))
        return [pool[i % len(pool)] for i in range(n)], None

    @torch.no_grad()
    def sample(self, runner, step: int):
        """Draw the samples on rank 0 (on every rank under FSDP) and log them under
        iteration ``step`` on rank 0; returns them (None on the other ranks). Every
        rank calls it: the model to sample may have to be gathered
        (:func:`sampling_model`)."""
        self._last = step
        from mmsora.diffusion.scheduler_sampling import SamplerStepError
        with sampling_model(runner, self.use_ema) as model:
            if not (is_main_process() or isinstance(model, ShardedSampler)):
                return None
            try:
                samples, labels = self._draw(runner, model)
            except SamplerStepError as e:  # (the sampler's NaN: training is not at fault)
                if is_main_process():
                    runner.logger.warning(f'Iter(sample) [{step}] no samples: {e}')
                return None
            except FileNotFoundError as e:  # (a VAE or text encoder folder that training
                # never loads, not there: the run stopped at its first samples; any other
                # file missing, the run's own or a bug's, is no such case)
                if not _model_folder_error(model, e):
                    raise
                if is_main_process():
                    runner.logger.warning(f'Iter(sample) [{step}] no samples (training goes '
                                          f'on): {e}')
                return None
        return self._log(runner, samples, labels, step) if is_main_process() else None

    def _sample_cfg(self, runner) -> dict:
        """The config's ``sample_cfg`` with the hook's over it (``fps`` included)."""
        from mmsora.diffusion.scheduler_sampling import merge_sample_cfg
        return merge_sample_cfg(runner.cfg.get('sample_cfg'), self.sample_cfg)

    def _draw(self, runner, model):
        from mmsora.apis import sample_images
        cfg = self._sample_cfg(runner)
        cfg.pop('fps', None)
        labels, prompts = self._conditions(model)
        was_training = model.training
        states = get_rng_states()  # sampling must not shift the training noise
        try:
            model.eval()
            samples = sample_images(model, labels, [self.seed + i for i in range(self.num_samples)],
                                    batch_size=self.num_samples, prompts=prompts, **cfg)
        finally:
            set_rng_states(states)
            model.train(was_training)
            offload = getattr(getattr(model, 'text_encoder', None), 'offload', None)
            if callable(offload) and offload():  # (not training memory: docs)
                torch.cuda.empty_cache()
        return samples, labels

    def _log(self, runner, samples, labels, step: int):
        from mmsora.apis.video import DEFAULT_FPS, save_videos
        fps = self._sample_cfg(runner).get('fps', DEFAULT_FPS)
        out = osp.join(runner.log_dir, 'samples', f'iter_{step}')
        try:
            pictures = _local_pictures(runner.visualizer, 'samples', step)
            before = [_file_state(p) for p in pictures]
            runner.visualizer.add_image('samples', filmstrip(samples), step=step)
            lost = self._check_pictures(runner, step, pictures, before)
            if samples.dim() == 5:  # (an odd size is padded for H.264, with a note)
                save_videos(samples, out + osp.sep, fps,
                            labels if labels is not None else [None] * len(samples),
                            gif=self.gif)
        except Exception as e:  # samples are to watch: saving them never ends a run
            runner.logger.warning(f'Iter(sample) [{step}] the samples were not saved '
                                  f'(training goes on): {type(e).__name__}: {e}')
            return samples
        # (the warning is said once a run; which pictures are missing, every time)
        missing = (f' (local pictures written: {len(pictures) - len(lost)} of '
                   f'{len(pictures)}; missing: {", ".join(lost)})' if lost else '')
        runner.logger.info(f'Iter(sample) [{step}] {len(samples)} samples logged to the '
                           f'visualizer{missing}'
                           + (f' and {out}' if samples.dim() == 5 else ''))
        return samples

    def _check_pictures(self, runner, step: int, pictures, before) -> list:
        """The ``pictures`` that add_image did not write; warns of the first, once a run
        of this hook."""
        lost = [p for p, b in zip(pictures, before) if not _picture_written(p, b)]
        if lost and not self._picture_lost:
            self._picture_lost = True
            runner.logger.warning(
                f'Iter(sample) [{step}] the samples picture {lost[0]} was not written '
                '(is the disk full?): free space to see the next ones; training goes on '
                '(said once a run)')
        return lost

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.every_n_train_iters(runner, self.interval):
            self.sample(runner, runner.iter + 1)

    def after_train(self, runner):
        if self.at_end and self._last != runner.iter:
            self.sample(runner, runner.iter)
