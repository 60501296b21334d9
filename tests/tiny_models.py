"""Tiny model configs shared by the tests, and tiny runs and folders made from them."""
# The tiny text encoder folders (and their vocabulary) are the package's: the tools
# write them too (tools/make_tiny_stable_cascade.py).
from mmsora.utils.tiny_checkpoints import TINY_WORDS, make_tiny_text_encoder  # noqa: F401

# A tiny random SD-style VAE: 2 blocks -> spatial factor 2, 4 latent channels.
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                norm_num_groups=8, down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, sample_size=16)

# --cfg-options that shrink the main demo (configs/dit/dit_tiny2_1xb32_1500_shapes16.py)
# to 8x8 pictures, a 2-block DiT of width 32 and 3 logged steps with a global batch of
# 8 (for the multi-process training tests).
TINY_DEMO_OPTIONS = [
    'model.denoiser.hidden_size=32', 'model.denoiser.depth=2', 'model.denoiser.num_heads=2',
    'model.denoiser.input_size=8', 'model.latent_shape=[3,8,8]',
    'model.denoiser.class_dropout_prob=0.5',
    'train_dataloader.dataset.size=8', 'train_dataloader.dataset.num_samples=32',
    'param_scheduler=[]', 'train_cfg.max_iters=3', 'default_hooks.logger.interval=1',
    'global_batch_size=8',
]

# A tiny random Wan video VAE: spatial factor 4, temporal factor 2 (causal: T frames ->
# (T - 1) // 2 + 1 latent frames), 4 latent channels, with per-channel latent statistics.
TINY_WAN_VAE = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2], num_res_blocks=1,
                    temperal_downsample=[False, True], attn_scales=[],
                    latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 1.0, 0.5])

# The main demo config and the --cfg-options that shrink it for the single-process
# training tests (tests/test_engine/test_train.py and the tests that train like it):
# a 2-block DiT of width 32 on 8x8 pictures, batch 8, every step logged.
DEMO = 'configs/dit/dit_tiny2_1xb32_1500_shapes16.py'
TINY_TRAIN = [
    'model.denoiser.hidden_size=32', 'model.denoiser.depth=2', 'model.denoiser.num_heads=2',
    'model.denoiser.input_size=8', 'model.latent_shape=[3,8,8]',
    'train_dataloader.dataset.size=8', 'train_dataloader.dataset.num_samples=64',
    'train_dataloader.batch_size=8', 'default_hooks.logger.interval=1',
    'param_scheduler=[]',
]


def tiny_cfg(repo_root, work_dir, max_iters, *extra, resume=None, load_from=None):
    """tools/train.py's config of the shrunk demo (:data:`TINY_TRAIN`) for ``max_iters``
    iterations in ``work_dir``, with ``extra`` --cfg-options, ready for
    ``Runner.from_cfg``."""
    import os.path as osp

    import mmsora.datasets  # noqa: F401  (the Runner builds from these registries)
    import mmsora.diffusion  # noqa: F401
    import mmsora.engine  # noqa: F401
    import mmsora.models  # noqa: F401
    from tools.train import build_train_config, parse_args
    argv = [osp.join(repo_root, DEMO), '--work-dir', str(work_dir),
            '--cfg-options', f'train_cfg.max_iters={max_iters}', *TINY_TRAIN, *extra]
    if resume:
        argv += ['--resume', resume]
    if load_from:
        argv += ['--load-from', load_from]
    cfg = build_train_config(parse_args(argv))
    cfg.experiment_name = f'{osp.basename(str(work_dir))}-{max_iters}-{bool(resume)}'
    return cfg


# The video demo shrunk for the tests that train a video run and sample it: 4 frames of
# SIZE x SIZE (patch PATCH), 2 blocks of width 32, 2 iterations with a checkpoint at 2,
# on the clips.csv of tests.tiny_data.moving_square_clip: seconds on CPU.
VIDEO_DEMO = 'configs/video_dit/video_dit_tiny4_1xb1_overfit_bikes.py'
TINY_VIDEO_RUN = '''_base_ = [{base!r}]
model = dict(denoiser=dict(input_size={size}, patch_size={patch_size}, hidden_size=32,
                           depth=2, num_heads=2, num_frames=4),
             latent_shape=(3, 4, {size}, {size}))
train_dataloader = dict(dataset=dict(data_root={data_root!r}, manifest='clips.csv',
    pipeline=[dict(type='SampleClipIndices', num_frames=4, mode='center'),
              dict(type='DecodeFrames'),
              dict(type='ResizeCropVideo', size={size}),
              dict(type='PackVideoInputs')]))
param_scheduler = []
train_cfg = dict(max_iters=2)
default_hooks = dict(checkpoint=dict(interval=2))
'''
# The demo's EMA and a sample hook at iteration 2 (one clip, 2 steps).
TINY_VIDEO_SAMPLE_HOOK = '''custom_hooks = [
    dict(type='EMAHook', momentum=0.05, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='SampleVisualizationHook', interval=2, num_samples=1,
         sample_cfg=dict(num_steps=2)),
]
'''


def tiny_video_run_config(path, repo_root, data_root, size=16, patch_size=4,
                          sample_hook=False):
    """Write the shrunk video demo (:data:`TINY_VIDEO_RUN`) at ``path`` (a pathlib.Path)
    for frames of ``size`` x ``size`` in patches of ``patch_size``, trained on
    ``data_root``'s clips.csv, with :data:`TINY_VIDEO_SAMPLE_HOOK` if ``sample_hook``;
    returns ``path`` as a string."""
    import os.path as osp
    text = TINY_VIDEO_RUN.format(base=osp.join(repo_root, VIDEO_DEMO), size=size,
                                 patch_size=patch_size, data_root=str(data_root))
    path.write_text(text + (TINY_VIDEO_SAMPLE_HOOK if sample_hook else ''))
    return str(path)


def make_tiny_clip(path):
    """A tiny random transformers CLIPModel folder with the tests' word-level tokenizer."""
    import torch
    import transformers
    make_tiny_text_encoder(path, kind='clip')  # the tokenizer files; the model is replaced
    vocab = len(transformers.AutoTokenizer.from_pretrained(path))
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2,
                         max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    transformers.CLIPModel(config).save_pretrained(path)
    return str(path)


# A tiny DiT config for tools/estimate_memory.py and tools/benchmark.py CONFIG, and the
# --model arguments of a one-step benchmark on the CPU.
TINY_DIT_CONFIG = (
    "model = dict(type='LatentDiffusion', denoiser=dict(type='DiT', input_size=8, "
    "patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, "
    "num_classes=10{extra}), latent_shape=(4, 8, 8), num_classes=10)\n"
    "optim_wrapper = dict(type='{wrapper}', {dtype}optimizer=dict(type='AdamW', lr=1e-4))\n"
    "custom_hooks = []\n")
BENCH_SMALL = ['--model', 'DiT-S/8', '--input-size', '16', '--num-classes', '10',
               '--batch-size', '2', '--steps', '1', '--warmup', '0', '--device', 'cpu']


def tiny_dit_config(tmp_path, text='', extra='', amp=False, name='tiny.py') -> str:
    """:data:`TINY_DIT_CONFIG` (``extra``: more denoiser arguments; ``amp``: an
    AmpOptimWrapper in bfloat16) and ``text`` after it, written to ``tmp_path/name``."""
    path = tmp_path / name
    path.write_text(TINY_DIT_CONFIG.format(
        extra=extra, wrapper='AmpOptimWrapper' if amp else 'OptimWrapper',
        dtype="dtype='bfloat16', " if amp else '') + text)
    return str(path)


# A tiny Stage C with the released prior's layout (two levels at one resolution,
# sca/crp timestep conditioning, CLIP text + pooled + image inputs).
TINY_STAGE_C = dict(
    in_channels=4, out_channels=4, timestep_ratio_embedding_dim=16, patch_size=1,
    conditioning_dim=32, block_out_channels=(32, 32), num_attention_heads=(2, 2),
    down_num_layers_per_block=(1, 2), up_num_layers_per_block=(2, 1),
    down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
    block_types_per_layer=(('SDCascadeResBlock', 'SDCascadeTimestepBlock',
                            'SDCascadeAttnBlock'),) * 2,
    clip_text_in_channels=24, clip_text_pooled_in_channels=20, clip_image_in_channels=8,
    clip_seq=2, kernel_size=3, dropout=(0.0, 0.0), self_attn=True,
    timestep_conditioning_type=('sca', 'crp'), switch_level=(False,))


def released_stage_c(folder, unet=TINY_STAGE_C, seed=0, **save):
    """A random diffusers ``StableCascadeUNet`` of config ``unet`` (seeded ``seed``),
    moved off its init (diffusers zero-inits some weights), saved in ``folder`` as a
    released prior folder (``save``: ``save_pretrained``'s options, as
    ``variant='bf16'``); returns the UNet."""
    import torch
    from diffusers.models.unets.unet_stable_cascade import StableCascadeUNet
    torch.manual_seed(seed)
    released = StableCascadeUNet(**unet)
    with torch.no_grad():
        for p in released.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    released.save_pretrained(folder, **save)
    return released


# The shapes demo's DiT (:data:`DEMO`), shrunk for tools/text2video.py's mmsora picture
# backend: 16x16 pixels, 2 classes, one block of width 32.
TINY_SHAPES_DIT = '''_base_ = [{base!r}]
model = dict(denoiser=dict(hidden_size=32, depth=1, num_heads=2, num_classes=2),
             num_classes=2)
sample_cfg = dict(sampler='ddim', num_steps=2, cfg_scale=1.0)
'''


def tiny_shapes_dit_run(folder):
    """A random :data:`TINY_SHAPES_DIT` (seeded 0) in ``folder`` (a pathlib.Path): its
    config, tiny_dit.py, and a checkpoint, iter_1.pth, that also carries the config.

    Returns:
        (the config's path, the checkpoint's path, the model).
    """
    import importlib
    import os.path as osp

    import torch
    from mmengine.config import Config

    from mmsora.registry import MODELS
    from tests.conftest import REPO_ROOT
    importlib.import_module('mmsora.models')  # (registers the modules)
    config = folder / 'tiny_dit.py'
    config.write_text(TINY_SHAPES_DIT.format(base=osp.join(REPO_ROOT, DEMO)))
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    state = {f'denoiser.{k}': v for k, v in model.denoiser.state_dict().items()}
    checkpoint = folder / 'iter_1.pth'
    torch.save(dict(state_dict=state, meta=dict(cfg=cfg.pretty_text)), checkpoint)
    return str(config), str(checkpoint), model
