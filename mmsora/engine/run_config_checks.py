"""The run's config checked before the Runner, in tools/train.py.

Its model built on the meta device (a config mistake in one line, before the Runner's
start-up output), the VAE folder against what it holds, the hooks a config's own
``custom_hooks`` list left out, a config named for another number of processes, and
a training set smaller than one global batch.
"""
import os.path as osp

import torch

from mmsora.utils.cli import UserError, note, plural
from mmsora.utils.error_messages import explain_error

def build_model_on_meta(cfg):
    """The config's model built on the meta device (no memory, no files read: weights
    load later, in init_weights), or None when that fails for a reason that is not a
    config mistake (the Runner builds it again and shows it). A config mistake in the
    model (an unknown type or key, a missing argument) is one line now, before the
    Runner prints the environment and the config and makes the work dir."""
    import copy

    import mmsora.models  # noqa: F401  (registers the modules)
    from mmsora.registry import MODELS
    try:
        with torch.device('meta'):
            return MODELS.build(copy.deepcopy(cfg.model))
    except (KeyError, TypeError, ValueError) as e:  # the registry's, the constructors'
        # and the model's own consistency checks (latent_shape vs in_channels, ...)
        message = explain_error(e)
        if message is not None:
            raise UserError(message) from None
    except Exception:  # e.g. something the meta device cannot do
        pass
    return None


def note_missing_hooks(cfg) -> None:
    """A config's own ``custom_hooks`` list replaces its base's whole (mmengine merges
    dicts, not lists): a list of one SampleVisualizationHook dropped the EMA and the
    RNG states that every mmsora config keeps, without a word."""
    from mmsora.engine.hooks import RNGStateHook
    from mmsora.utils.training_inputs import hook_class, is_ema_hook
    hooks = cfg.get('custom_hooks') or []
    missing = []
    if not any(is_ema_hook(h) for h in hooks):
        missing.append('no EMAHook (no EMA weights: checkpoints hold the trained weights, '
                       'which infer samples)')
    if not any(issubclass(hook_class(h), RNGStateHook) for h in hooks):
        missing.append('no RNGStateHook (a --resume draws other noise than the run would '
                       'have)')
    if missing:
        note(f'custom_hooks has {" and ".join(missing)}; a config\'s custom_hooks list '
             "replaces its base's whole: list them too if they were meant "
             '(configs/_base_/default_runtime.py)', once=True)


def check_vae_folder(model) -> None:
    """The VAE's folder (``model.vae.pretrained_path``) against what it holds, from its
    config.json, before the run: the VAE loads only when samples are decoded, so a T5
    folder given as the VAE trained a whole run before tools/infer.py named it."""
    check = getattr(getattr(model, 'vae', None), 'check_folder', None)
    if check is not None:
        try:
            check()
        except ValueError as e:  # (a message naming its own key, e.g. decoder_subfolder,
            #  is not put under pretrained_path)
            named = 'model.vae.' in str(e)
            raise UserError(str(e) if named else f'model.vae.pretrained_path: {e}') from None


def note_named_layout(config, cfg, world_size: int) -> None:
    """Say when a config named for N processes (``..._8xb32_...``: OpenMMLab's batch
    per process) runs on another number of them without a ``global_batch_size``: the
    global batch, which the recipe's learning rate goes with, is then another (DiT's
    256 became 32 on one card, without a word)."""
    import re
    # (the layout may end the name: t2v_tiny_4xb2.py)
    found = re.search(r'_(\d+)xb(\d+)(_|\.py$|$)', osp.basename(config))
    batch = (cfg.get('train_dataloader') or {}).get('batch_size')
    if not found or int(found.group(1)) == world_size or not isinstance(batch, int):
        return
    gpus, named_batch = int(found.group(1)), int(found.group(2))
    # (with the run's strategy's accumulation: tools/train.py's build_train_config puts
    # it in cfg first)
    from mmsora.engine.strategies import accumulation_of
    recipe, ours = gpus * named_batch, world_size * batch * accumulation_of(cfg)
    if recipe == ours:  # (the batch or accumulation was set to keep it)
        return
    def processes(n):
        return f'{n} process' + ('es' if n != 1 else '')
    fix = ''
    if recipe % world_size == 0:
        fix = f' For the recipe\'s: --cfg-options global_batch_size={recipe}' + (
            f' (with optim_wrapper.accumulative_counts=K where {recipe // world_size} a '
            'process does not fit)' if world_size < gpus else '')
    note(f'{osp.basename(config)} is named for {processes(gpus)} x {named_batch} (a global '
         f'batch of {recipe}); this run has {world_size}: a global batch of {ours} at the '
         f'same learning rate.{fix}')


def note_small_train_set(cfg, world_size: int) -> None:
    """Say when the training set holds fewer samples than one global batch (the batch
    per process x the processes x the accumulation steps, as ``global_batch_size``
    counts it): mmengine's InfiniteSampler fills each batch by going round the samples
    again, so a run on a few clips extracted to try things (6, in a global batch of
    256) trained on copies of them without a word. A note, not a refusal: overfitting a
    few samples is a check worth running. Only where the length is known cheaply (a
    packed store's ``index.json``; no data is read)."""
    from mmsora.datasets.store_checks import store_roots, stores_length
    from mmsora.engine.strategies import accumulation_of
    loader = cfg.get('train_dataloader') or {}
    sampler = loader.get('sampler') or {}
    kind = sampler.get('type') if hasattr(sampler, 'get') else None
    name = kind if isinstance(kind, str) else getattr(kind, '__name__', '')
    batch = loader.get('batch_size')
    # (mmengine's DefaultSampler gives smaller batches instead: no copies)
    if name.rsplit('.', 1)[-1] != 'InfiniteSampler' or isinstance(batch, bool) or \
            not isinstance(batch, int) or batch < 1:
        return
    length = stores_length(cfg)
    if not length:  # (unknown; an empty store: the dataset refuses it)
        return
    accumulation = accumulation_of(cfg)
    total = batch * world_size * accumulation
    if length >= total:
        return
    roots = store_roots(cfg)
    held = (f'{roots[0]}: the store holds' if len(roots) == 1 else
            f'train_dataloader.dataset: its {len(roots)} stores hold')
    parts = ([f'train_dataloader.batch_size={batch}']
             + ([f'{world_size} processes'] if world_size > 1 else [])
             + ([f'{accumulation} accumulation steps'] if accumulation > 1 else []))
    note(f'{held} {plural(length, "sample")}, fewer than one global batch of {total} '
         f'({" x ".join(parts)}): every global batch repeats samples (InfiniteSampler goes '
         f'round them again to fill it), so the run trains on copies of these {length}; '
         'fine for overfitting a few as a check, else extract more or lower the batch')
