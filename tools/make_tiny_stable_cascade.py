"""Make the folders the tiny Stable Cascade config reads: ``python
tools/make_tiny_stable_cascade.py [CONFIG] [--cfg-options ...] [--force]``.

``configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py`` (the default
CONFIG) trains a tiny Stage C on CPU. It reads three things that no download provides,
at the paths the config names (change them with the same ``--cfg-options`` as for
training):

- ``model.text_encoder.pretrained_path`` (checkpoints/clip-tiny): a tiny random CLIP text
  encoder with projection and a word-level tokenizer;
- ``model.vae.pretrained_path`` (checkpoints/stable-cascade-tiny): a tiny random Stage B
  (``decoder_lite``) + Stage A (``vqgan``) + scheduler, the released folder's layout;
- ``train_dataloader.dataset.data_root`` (data/stage_c_toy): a packed latent store of two
  Stage C clips (a blob moving right, one moving down) captioned 'a red disk' and 'a
  blue ring', with their tiny-CLIP text embeddings.

Then, as the config says:
    python tools/train.py configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py
    python tools/infer.py work_dirs/stable_cascade_video_tiny_1xb2_60_toy \
        --prompt "a red disk" "a blue ring" --out clips/ --steps 4 --cfg-scale 2

The weights are random: this checks the whole path on a CPU in about a minute; it
generates nothing meaningful.
"""
import os
import os.path as osp
import shutil
import sys

import numpy as np

from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.cli import ArgumentParser, UserError, run_cli
from mmsora.utils.config_loading import load_config

TINY_CONFIG = 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py'
CAPTIONS = ('a red disk', 'a blue ring')


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Make the tiny Stable Cascade config's text encoder, Stage B + A "
                    'and toy latent store folders (random weights)')
    parser.add_argument('config', nargs='?', default=TINY_CONFIG,
                        help=f'the config whose folders to make (default: {TINY_CONFIG})')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries, e.g. the folders: '
                        'train_dataloader.dataset.data_root=DIR')
    parser.add_argument('--force', action='store_true',
                        help='replace folders that exist (runs trained against the old '
                        'random weights no longer match them)')
    return parser.parse_args(argv)


def toy_clips(latent_shape):
    """Two clips ``(2, C, T, H, W)``: a blob in the first half of the channels moving
    right, one in the second half moving down."""
    c, t, h, w = latent_shape
    clips = np.zeros((2, c, t, h, w), np.float32)
    for f in range(t):
        clips[0, :c // 2, f, h // 4, f % w] = 1.5
        clips[1, c // 2:, f, f % h, w // 2] = -1.5
    return clips


def write_toy_store(root, clip_path, latent_shape, max_length):
    """The two clips with the tiny CLIP's embeddings of their captions."""
    from mmsora.datasets.latent_store_writer import LatentStoreWriter
    from mmsora.models.text_encoders import HFTextEncoder
    embeds, mask, pooled = HFTextEncoder(clip_path, kind='clip_with_projection',
                                         hidden_layer=-1, max_length=max_length).encode(
                                             list(CAPTIONS))
    clips = toy_clips(latent_shape)
    writer = LatentStoreWriter(root, num_source_items=len(clips), latent_shape=clips.shape[1:],
                               dtype='float32', content='samples', scale_factor=1.0,
                               vae='tools/make_tiny_stable_cascade.py',
                               meta=dict(captions=list(CAPTIONS)),
                               text_shape=tuple(embeds.shape[1:]), pooled_dim=pooled.shape[1])
    writer.write_shard(0, clips[:, None, None], [0] * len(clips), text=dict(
        text_embeds=embeds, text_mask=mask, pooled_text_embeds=pooled))
    writer.finalize()


def main(argv=None):
    args = parse_args(argv)
    cfg = apply_cfg_options(load_config(args.config), args.cfg_options)
    if (cfg.model.get('vae') or {}).get('type') != 'StableCascadeDecoder' or \
            (cfg.model.get('text_encoder') or {}).get('kind') != 'clip_with_projection':
        raise UserError(f'{args.config}: not a Stable Cascade config (needs model.vae of '
                        "type StableCascadeDecoder and a 'clip_with_projection' text "
                        'encoder)')
    paths = {'text encoder': cfg.model.text_encoder.pretrained_path,
             'Stage B + A': cfg.model.vae.pretrained_path,
             'latent store': cfg.train_dataloader.dataset.data_root}
    existing = [p for p in paths.values() if osp.exists(p)]
    if existing and not args.force:
        raise UserError(f'{", ".join(existing)} already exist(s); --force replaces them '
                        '(a run trained against the old random weights will not match)')
    for path in existing:
        shutil.rmtree(path) if osp.isdir(path) else os.remove(path)

    from mmsora.models.vaes.stable_cascade_decoder import StableCascadeDecoder
    from mmsora.utils.trained_settings import keyword_defaults
    from mmsora.utils.tiny_checkpoints import (make_tiny_stable_cascade_decoder,
                                               make_tiny_text_encoder)
    unet = cfg.model.denoiser.unet
    pooled = unet.clip_text_pooled_in_channels
    if pooled != 16:  # the tiny CLIP's projection width
        raise UserError(f'model.denoiser.unet.clip_text_pooled_in_channels={pooled}: the '
                        'tiny CLIP projects to 16 (this tool is for tiny configs; a '
                        'released-size one reads the released weights)')
    make_tiny_text_encoder(paths['text encoder'], 'clip_with_projection',
                           width=unet.clip_text_in_channels)
    make_tiny_stable_cascade_decoder(
        paths['Stage B + A'], stage_c_channels=unet.in_channels, pooled_dim=pooled,
        subfolder=cfg.model.vae.get(
            'decoder_subfolder', keyword_defaults(StableCascadeDecoder)['decoder_subfolder']))
    write_toy_store(paths['latent store'], paths['text encoder'],
                    cfg.model.latent_shape, cfg.model.text_encoder.max_length)
    for what, path in paths.items():
        print(f'wrote {what}: {path}')


if __name__ == '__main__':
    sys.exit(run_cli(main))
