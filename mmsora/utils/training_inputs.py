"""What ``tools/train.py`` trains on pre-extracted data, built without a dataset.

The training model is the config's ``model`` without the VAE and the text encoder
(latents and text embeddings come from the latent store), and a batch is what the
latent store's loader yields: ``latents`` of the model's ``latent_shape`` and labels,
or text embeddings with their mask (and pooled embeddings). ``tools/estimate_memory.py``
counts this step's memory and ``tools/benchmark.py`` times it; both find the step's
hooks (the EMA hook) by :func:`hook_class`.
"""
from typing import Optional

import torch

__all__ = ['training_model_cfg', 'dit_recipe_model_cfg', 'denoiser_kwargs', 'training_batch',
           'forward_flops_per_sample', 'hook_class', 'is_ema_hook', 'ema_hook_cfg']


def training_model_cfg(cfg) -> dict:
    """``cfg.model`` without the modules that pre-extraction takes out of training."""
    model_cfg = cfg.model.to_dict() if hasattr(cfg.model, 'to_dict') else dict(cfg.model)
    model_cfg.pop('vae', None)
    model_cfg.pop('text_encoder', None)
    model_cfg.pop('pretrained_denoiser', None)
    return model_cfg


def dit_recipe_model_cfg(preset: str, input_size: int, num_classes: int) -> dict:
    """``model`` of DiT's ImageNet recipe at a preset's size (``'DiT-S/2'``): Gaussian
    diffusion with learned sigma over ``input_size`` latents; what the benchmarks
    build without a config (``--model``)."""
    from mmsora.models import DiT, dit_preset
    from mmsora.utils.trained_settings import keyword_defaults
    denoiser = dict(type='DiT', **dit_preset(preset, input_size=input_size,
                                             num_classes=num_classes))
    arch = {**keyword_defaults(DiT), **denoiser}  # (a preset leaves these to DiT)
    return dict(type='LatentDiffusion', denoiser=denoiser,
                diffusion=dict(type='GaussianDiffusion', learn_sigma=arch['learn_sigma']),
                latent_shape=(arch['in_channels'], input_size, input_size),
                num_classes=num_classes)


def denoiser_kwargs(model, n: int, text_len: Optional[int] = None) -> dict:
    """A batch's conditioning as the denoiser takes it: labels (``y``), or text tokens
    (``y``, ``mask``, and ``pooled`` where the denoiser reads it). ``text_len`` defaults
    to the length of a VideoDiT's learned null caption (120), else 77 (CLIP)."""
    denoiser = model.denoiser
    if getattr(denoiser, 'condition', 'class') != 'text':
        return dict(y=torch.zeros(n, dtype=torch.long))
    null_caption = getattr(getattr(denoiser, 'y_embedder', None), 'y_embedding', None)
    if null_caption is not None:  # VideoDiT: (max_text_len, text_dim)
        text_len = text_len or null_caption.shape[0]
        text_dim = null_caption.shape[1]
    else:  # Stable Cascade: CLIP tokens
        text_len, text_dim = text_len or 77, denoiser.text_dim
    kwargs = dict(y=torch.randn(n, text_len, text_dim),
                  mask=torch.ones(n, text_len, dtype=torch.bool))
    if getattr(denoiser, 'pooled_dim', None):
        kwargs['pooled'] = torch.randn(n, denoiser.pooled_dim)
    return kwargs


def training_batch(model, n: int, text_len: Optional[int] = None) -> dict:
    """A loader's batch of ``n`` random samples for ``model`` (a ``LatentDiffusion``):
    ``latents`` (N, *latent_shape) and ``labels``, or ``text_embeds`` / ``text_mask``
    (/ ``pooled_text_embeds``), on the CPU (the text in float32, as a float32 store's
    loader hands it over; a float16 store's is half the bytes to copy)."""
    latents = torch.randn(n, *model.latent_shape)
    kwargs = denoiser_kwargs(model, n, text_len)
    if 'mask' not in kwargs:  # class labels
        return dict(latents=latents, labels=kwargs['y'])
    batch = dict(latents=latents, text_embeds=kwargs['y'], text_mask=kwargs['mask'])
    if 'pooled' in kwargs:
        batch['pooled_text_embeds'] = kwargs['pooled']
    return batch


def forward_flops_per_sample(model, device, text_len: Optional[int] = None) -> int:
    """FLOPs of one forward pass of ``model.denoiser`` on one sample of
    ``model.latent_shape`` with the conditioning of :func:`denoiser_kwargs` (counted on
    the operators run, :func:`mmsora.utils.flops.forward_flops`): what
    ``tools/benchmark.py`` and ``tools/benchmark_sampling.py`` turn into TFLOP/s."""
    from mmsora.utils.flops import forward_flops
    one = {k: v.to(device) for k, v in denoiser_kwargs(model, 1, text_len).items()}
    x = torch.zeros(1, *model.latent_shape, device=device)
    return forward_flops(model.denoiser, x, torch.zeros(1, dtype=torch.long, device=device),
                         attention_model=model.denoiser, **one)


def hook_class(hook_cfg, where: str = 'custom_hooks') -> type:
    """The class a hook config builds: its ``type`` looked up in the registry (or the
    class itself, as a pure-Python config may give it; or the hook's own class, for a
    hook given built). A name nobody registered (a typo), or a ``type`` that is not a
    class, is a one-line :class:`~mmsora.utils.cli.UserError` that starts with
    ``where``."""
    from mmengine.hooks import Hook

    from mmsora.utils.cli import UserError
    from mmsora.utils.error_messages import unknown_type_message
    from mmsora.utils.config_keys import registered_class
    if isinstance(hook_cfg, Hook):
        return type(hook_cfg)
    kind = hook_cfg['type']
    if not isinstance(kind, (str, type)):
        raise UserError(f'{where}: type {kind!r} is neither a hook class nor the name '
                        'of one')
    import mmsora.engine  # noqa: F401  (fills the registry)
    from mmsora.registry import HOOKS
    cls = registered_class(hook_cfg, HOOKS, where)
    if cls is None:  # a dotted name that does not import
        raise UserError(f'{where}: {unknown_type_message(kind, HOOKS.name)}')
    return cls


def is_ema_hook(hook_cfg) -> bool:
    """Whether the hook keeps an averaged model: mmengine's ``EMAHook`` or a subclass
    (``FP32EMAHook``, ``ShardedEMAHook``)."""
    from mmengine.hooks import EMAHook
    return issubclass(hook_class(hook_cfg), EMAHook)


def ema_hook_cfg(cfg) -> Optional[dict]:
    """The config of the first EMA hook among ``custom_hooks`` (:func:`is_ema_hook`;
    for a hook given built, its type and averaging settings), or None."""
    from mmengine.hooks import Hook
    for hook in cfg.get('custom_hooks') or []:
        if is_ema_hook(hook):
            if isinstance(hook, Hook):
                settings = {k: v for k, v in hook.ema_cfg.items() if k != 'type'}
                return dict(type=type(hook), **settings)
            return hook
    return None
