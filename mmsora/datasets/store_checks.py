"""A packed latent store against the config that trains on it, before the Runner.

What ``tools/train.py`` checks of each store a config's dataset reads (its
``index.json``, the shards' labels, the manifest's frame rates), so that a mistake is
one line before the Runner's start-up instead of a wrong run or a failure at its first
batch: the VAE the latents came from (kind, folder, scale), the latent and caption
shapes, the labels against ``num_classes``, the clips' frame rate against the samples',
the caption length and the text encoder's precision against the config's text encoder.
"""
import os.path as osp
import shlex

from mmsora.datasets.store_format import UNRECORDED_TEXT_ENCODER_DTYPE
from mmsora.utils.cli import UserError, note
from mmsora.utils.labels import check_label_range

__all__ = ['check_latent_store', 'store_roots', 'check_stores_exist', 'check_one_store',
           'store_vae', 'note_video_dataset_fps', 'stores_length', 'FRAME_VAE', 'VIDEO_VAE']


def check_latent_store(cfg):
    """A packed latent store's ``index.json`` against the config, before the Runner
    (each of them, where the dataset reads several). The scale (``scale_factor``
    against ``model.vae.scale_factor``): latents scaled one way and decoded the other
    trained and sampled without a word, wrongly. The labels of a class-conditional
    model against ``model.num_classes``: a label past them stopped the run at the first
    batch that held one, which may come hours in."""
    for root in store_roots(cfg):
        check_one_store(cfg, root)


def store_roots(cfg) -> list:
    """The latent store folders a ``PackedLatentDataset`` config reads."""
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    if dataset.get('type') != 'PackedLatentDataset':
        return []
    stores = dataset.get('store', '')
    return [osp.normpath(osp.join(dataset.get('data_root', ''), store))
            for store in ([stores] if isinstance(stores, str) else stores)
            if isinstance(store, str)]


def check_stores_exist(cfg) -> None:
    """A latent store folder that does not exist, named before the Runner: the dataset
    named it after the start-up had made the work dir and, for a large model, built it
    (39 s for Stable Cascade lite). Apart from :func:`build_train_config`'s checks,
    which take a config without its data."""
    for root in store_roots(cfg):
        if not osp.isdir(root):
            check_one_store(cfg, root, missing_ok=False)


def stores_length(cfg):
    """How many samples the ``PackedLatentDataset`` of a config holds (its stores
    together), from each store's ``index.json`` alone (no shard is read), or None where
    that is not known so cheaply: another dataset, a store without a complete index of
    this format (the dataset says what is wrong with it)."""
    import json

    from mmsora.datasets.store_format import FORMAT
    roots, total = store_roots(cfg), 0
    if not roots:
        return None
    for root in roots:
        try:
            with open(osp.join(root, 'index.json')) as f:
                index = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(index, dict) or index.get('format') != FORMAT or \
                index.get('complete') is not True or not isinstance(index.get('shards'), list):
            return None
        shards = index['shards']
        counts = [s.get('count') if isinstance(s, dict) else None for s in shards]
        if not all(isinstance(n, int) and n >= 0 for n in counts):
            return None
        total += sum(counts)  # (a flip copy is the same sample: the dataset's length)
    return total


def check_one_store(cfg, root, missing_ok=True):
    index_file = osp.join(root, 'index.json')
    if not osp.isfile(index_file):
        if missing_ok and not osp.isdir(root):
            return  # (check_stores_exist)
        # a folder of something else (fast-DiT's features, a parent folder): named now,
        # as the dataset names it (after the Runner's start-up had made the work dir)
        from mmsora.datasets.latent_store import LatentStore
        try:
            LatentStore(root)
        except (OSError, ValueError) as e:
            raise UserError(f'train_dataloader.dataset: {e}') from None
        return
    import json
    try:
        with open(index_file) as f:
            index = json.load(f)
    except (OSError, ValueError):
        return  # the dataset says what is wrong with it
    check_store_vae(cfg, index, root)
    check_store_scale(cfg, index, index_file)
    check_store_shapes(cfg, index, root)
    note_clip_fps(cfg, index, root)
    from mmsora.utils.config_keys import text_conditioned_config
    if text_conditioned_config(cfg.model):
        note_caption_encoding(cfg, index, root)
        return
    check_store_labels(cfg, index, root)
    note_unnamed_classes(cfg, index, root)


# The VAE wrappers a store's latents come from (extract_features.py --vae / --video-vae)
# and how each encodes a clip.
FRAME_VAE, VIDEO_VAE = 'AutoencoderKLWrapper', 'VideoVAEWrapper'
VAE_KINDS = {FRAME_VAE: 'an image VAE, frame by frame: extract_features.py --vae',
             VIDEO_VAE: 'a video VAE: extract_features.py --video-vae'}


def store_vae(index):
    """``(wrapper, class name)`` of the VAE a store was encoded by, each None where the
    store does not tell: the class from its VAE folder's ``config.json`` where the
    folder is here, the wrapper from that class, else from its clips' frames (a video
    VAE compresses time, an image VAE keeps every frame)."""
    from mmsora.models.vaes.autoencoder_kl import folder_vae_class, vae_folder
    from mmsora.models.vaes.video_vae import VIDEO_VAE_CLASSES
    folder, found = index.get('vae'), None
    if isinstance(folder, str) and folder and osp.isdir(folder):
        found = folder_vae_class(vae_folder(folder))
    if found == 'AutoencoderKL':
        return FRAME_VAE, found
    if found in VIDEO_VAE_CLASSES:
        return VIDEO_VAE, found
    shape, frames = index.get('latent_shape'), (index.get('meta') or {}).get('num_frames')
    if isinstance(shape, list) and len(shape) == 4 and isinstance(frames, int) and frames > 1:
        return (FRAME_VAE if shape[1] == frames else VIDEO_VAE), None
    return None, None


def check_store_vae(cfg, index, root) -> None:
    """Refuse a store encoded by another kind of VAE than ``model.vae`` (an image VAE's
    latents decoded by a video VAE, or the other way): it trained without a word and
    its samples decoded to other frame counts and sizes (a frame-by-frame store on
    Wan: 31 frames at 64x64 for 16 at 32x32). A folder of the same kind that is not
    the store's is noted (the VAE may have been moved)."""
    vae = cfg.model.get('vae') or {}
    ours = vae.get('type') if hasattr(vae, 'get') else None
    if ours not in VAE_KINDS:
        return
    kind, cls = store_vae(index)
    folder = index.get('vae') if isinstance(index.get('vae'), str) else ''
    path = vae.get('pretrained_path')
    our_cls = vae.get('class_name', 'AutoencoderKLWan') if ours == VIDEO_VAE else None
    if kind is not None and (kind != ours or (cls and our_cls and cls != our_cls)):
        scale = index.get('scale_factor')
        keys = [f'model.vae.type={kind}'] + (
            [f'model.vae.class_name={cls or "CLASS"}'] if kind == VIDEO_VAE else []) + (
            [f'model.vae.pretrained_path={folder}'] if folder else []) + (
            [f'model.vae.scale_factor={scale:g}'] if isinstance(scale, (int, float)) else [])
        drop = ' without model.vae.class_name (a VideoVAEWrapper key)' if kind == FRAME_VAE \
            else ''
        option = '--video-vae' if ours == VIDEO_VAE else '--vae'
        again = (f', or extract the latents again with {option} {path}'
                 if isinstance(path, str) and path else '')
        raise UserError(f'{root}: the latents were encoded by {cls or "a VAE"} '
                        f'{"at " + folder + " " if folder else ""}({VAE_KINDS[kind]}) but '
                        f'model.vae is {ours} ({our_cls or "AutoencoderKL"}'
                        f'{", " + path if isinstance(path, str) else ""}): its samples would '
                        f'decode to other frames and sizes; set --cfg-options '
                        f'{" ".join(keys)}{drop}{again}')
    # (where the store's folder is here: a store copied from another machine records
    # a folder of that one; both as the wrapper loads them, a pipeline's vae/ included)
    from mmsora.models.vaes.autoencoder_kl import vae_folder
    if kind == ours and folder and isinstance(path, str) and path and osp.isdir(folder) \
            and osp.realpath(vae_folder(folder)) != \
            osp.realpath(vae_folder(path, vae.get('subfolder'))):
        note(f'{root}: the latents were encoded by the VAE at {folder} but '
             f'model.vae.pretrained_path is {path}: if that is not the same VAE (moved or '
             f'copied), samples decode wrongly; set model.vae.pretrained_path={folder}')


def check_store_scale(cfg, index, index_file) -> None:
    """Refuse latents normalised otherwise than ``model.vae`` undoes: scaled one way and
    decoded the other, they trained and sampled without a word, wrongly (a Wan store
    under VideoVAEWrapper took the base config's SD scale 0.18215: samples ~5.5x off).
    The scale is the wrapper's own (a video VAE's from its folder's config.json when
    the config gives none)."""
    vae = cfg.model.get('vae') or {}
    if not hasattr(vae, 'get') or vae.get('type') not in VAE_KINDS:
        return
    stored = index.get('scale_factor')
    if not isinstance(stored, (int, float)):
        return
    from mmsora.registry import MODELS
    try:
        wrapper = MODELS.build(dict(vae))  # (lazy: no weights are loaded)
        ours = wrapper.scale_factor
    except Exception:  # (a folder not here, another key wrong: said where it is built)
        return
    given = vae.get('scale_factor')
    if abs(stored - ours) > 1e-6 * abs(ours):
        says = (f'model.vae.scale_factor is {ours:g}' if given is not None else
                f'model.vae.scale_factor is unset ({getattr(wrapper, "class_name", "the VAE")}\'s '
                f'own: {ours:g})')
        raise UserError(f'{index_file}: the latents were scaled by {stored:g} but {says}: '
                        f'set model.vae.scale_factor={stored:g} (or extract the latents '
                        'again with the VAE\'s scale)')
    shift = index.get('shift_factor')
    ours = getattr(wrapper, 'shift_factor', 0.0)
    if isinstance(shift, (int, float)) and abs(shift - ours) > 1e-6 * max(abs(ours), 1e-6):
        raise UserError(f'{index_file}: the latents were shifted by {shift:g} but '
                        f'model.vae.shift_factor is {ours:g}: set model.vae.shift_factor='
                        f'{shift:g}')


def check_store_labels(cfg, index, root) -> None:
    """A class-conditional model's ``num_classes`` against the store's labels (the rule
    of ``--labels`` and of a batch: ``check_label_range``; a one-class model's store
    may hold -1, a row without a label)."""
    classes = cfg.model.get('num_classes', 1000)  # LatentDiffusion's default
    if not isinstance(classes, int):
        return
    import numpy as np
    shards = []
    for shard in index.get('shards') or []:
        try:
            shards.append(np.load(osp.join(root, shard['labels_file'])).reshape(-1))
        except (KeyError, OSError, ValueError):
            return  # the dataset says what is wrong with it
    labels = np.concatenate(shards) if shards else np.zeros(0, np.int64)
    if not labels.size:
        return

    def explain(sentence, bad):
        if bad[0] == -1:  # (the denoiser's label table is set alike, or the model refuses it)
            denoiser = cfg.model.get('denoiser') or {}
            both = ' model.denoiser.num_classes=1' if 'num_classes' in denoiser else ''
            return (f'{root}: the store holds label -1 (a manifest row without a label is '
                    '-1): add a label column to the manifest, or set model.num_classes=1'
                    f'{both} for an unconditional model')
        if bad[0] < 0:
            return sentence  # (not a manifest's: something else wrote the store)
        high = bad[-1]
        takes = ('an unconditional model: label 0, or -1' if classes == 1 else
                 f'labels 0 to {classes - 1}')
        return (f'{root}: the store\'s labels go up to {high} but model.num_classes='
                f'{classes} ({takes}): set model.num_classes={high + 1} and '
                f'model.denoiser.num_classes={high + 1}')
    check_label_range(labels, classes, f"{root}: the store's labels",
                      null=(-1,) if classes == 1 else (), explain=explain)
    high = int(labels.max())
    if classes > 1 and high + 1 <= classes // 2 and len(store_roots(cfg)) == 1:
        # (a 2-class store on the 101-class UCF config trained without a word; the
        # stores of a dataset of several are not counted together here)
        note(f'{root}: the store\'s labels go up to {high} but model.num_classes={classes}: '
             f'labels {high + 1} to {classes - 1} have no clips to learn from (samples of '
             f'them are untrained); set model.num_classes={high + 1} and '
             f'model.denoiser.num_classes={high + 1} (keep them where the table is a '
             'pretrained one\'s, as DiT\'s 1000)')


def note_unnamed_classes(cfg, index, root) -> None:
    """A store that records no class names (an older mmsora's video store), trained
    with others: its labels cannot be compared with theirs (PackedLatentDataset compares
    the names label by label), so label 0 may be another class in each, as before."""
    classes = cfg.model.get('num_classes', 1000)  # LatentDiffusion's default
    if not isinstance(classes, int) or classes <= 1 or len(store_roots(cfg)) < 2:
        return
    if (index.get('meta') or {}).get('classes') is None:
        note(f'{root}: the store records no class names (begun by an older mmsora): its '
             'labels cannot be compared with those of the other stores trained with it '
             '(label 0 may be another class in each); extract it again to have them '
             'compared', once=True)


def check_store_shapes(cfg, index, root) -> None:
    """Refuse a store whose latents or caption embeddings do not fit the model, before
    the Runner (the first batch said so after some 260 lines of start-up output)."""
    stored, ours = index.get('latent_shape'), cfg.model.get('latent_shape')
    if isinstance(stored, list) and isinstance(ours, (list, tuple)) and \
            tuple(stored) != tuple(ours):
        # (quoted for a shell: zsh takes an unquoted [24,32] for a file pattern)
        keys = ' '.join(shlex.quote(key) for key in [
            f'model.latent_shape={tuple(stored)}'.replace(' ', ''),
            *denoiser_sizes(cfg, stored)])
        raise UserError(f'{root}: the store holds latents of shape {tuple(stored)} but '
                        f'model.latent_shape is {tuple(ours)}: set --cfg-options {keys}, '
                        "or extract at the config's size")
    text = index.get('text_shape')
    width = (cfg.model.get('denoiser') or {}).get('text_dim')
    if isinstance(text, list) and len(text) == 2 and isinstance(text[1], int) and \
            isinstance(width, int) and text[1] != width:
        raise UserError(f'{root}: the store\'s caption embeddings are {text[1]} wide (its '
                        f'text encoder) but model.denoiser.text_dim is {width}: set '
                        f'model.denoiser.text_dim={text[1]}, or extract with the text '
                        'encoder the config names')


def denoiser_sizes(cfg, shape) -> list:
    """The ``model.denoiser.KEY=VALUE`` settings that fit latents of ``shape`` (C, [T,]
    h, w), of the sizes the config's denoiser sets otherwise. Before, the refusal said
    "and the denoiser's sizes to match": set latent_shape alone, the run was refused
    again for input_size, and a frame count left at the config's went unsaid."""
    denoiser = cfg.model.get('denoiser') or {}
    if not hasattr(denoiser, 'get'):
        return []
    fits = dict(in_channels=shape[0],
                input_size=shape[-1] if shape[-1] == shape[-2] else list(shape[-2:]))
    if len(shape) == 4:
        fits['num_frames'] = shape[1]
    return [f'model.denoiser.{key}={value}'.replace(' ', '') for key, value in fits.items()
            if key in denoiser and _sizes(denoiser[key]) != _sizes(value)]


def _sizes(value):
    """A size as a list of its sides (8 and (8, 8) alike; a config's tuple and the
    store's list alike), else the value."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value, value] if isinstance(value, int) else value


def note_clip_fps(cfg, index, root) -> None:
    """Say when the store's clips were sampled at another frame rate (extract_features.py
    --target-fps) than the config's samples are written at (``sample_cfg.fps``, else
    tools/infer.py's 8): the model learns motion at one rate and its clips play at the
    other, faster or slower, without a word."""
    meta = index.get('meta') or {}
    target, stride = meta.get('target_fps'), meta.get('frame_stride')
    if not (isinstance(target, (int, float)) and target > 0):
        target = None
    rates = _clip_rates(meta.get('source'), target, stride, store=index)
    if target and not rates:  # (no manifest to read: the rate asked)
        rates = [target]
    how = (f'--target-fps {target:g}' if target else f'--frame-stride {stride}' if stride
           else 'every frame')
    _note_clip_fps(cfg, root, rates, f'extract_features.py {how}')


def note_video_dataset_fps(cfg) -> None:
    """:func:`note_clip_fps` for clips decoded during training (a ``VideoDataset``
    whose pipeline samples them with ``SampleClipIndices``)."""
    dataset = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    if not hasattr(dataset, 'get') or dataset.get('type') != 'VideoDataset':
        return
    sampler = next((t for t in dataset.get('pipeline') or [] if hasattr(t, 'get')
                    and t.get('type') == 'SampleClipIndices'), None)
    if sampler is None or not isinstance(dataset.get('manifest'), str):
        return
    manifest = osp.join(dataset.get('data_root') or '', dataset['manifest'])
    target, stride = sampler.get('target_fps'), sampler.get('frame_stride')
    how = f'target_fps={target:g}' if target else f'frame_stride={stride or 1}'
    _note_clip_fps(cfg, manifest, _clip_rates(manifest, target, stride),
                   f'SampleClipIndices {how}')


def _note_clip_fps(cfg, where, rates, how) -> None:
    if not rates:
        return
    rate = sorted(rates)[len(rates) // 2]  # (the median: the videos' rates may differ)
    given = (cfg.get('sample_cfg') or {}).get('fps')
    from mmsora.apis.video import DEFAULT_FPS
    fps = given if isinstance(given, (int, float)) and given > 0 else DEFAULT_FPS
    if _same_rate(fps, rate):
        return
    written = f'sample_cfg.fps is {fps:g}' if given is not None else \
        f'sample_cfg sets no fps (tools/infer.py writes {fps:g})'
    spread = (f', {min(rates):.3g} to {max(rates):.3g} across the videos'
              if max(rates) > 1.02 * min(rates) else '')
    note(f'{where}: the clips were sampled at {rate:.3g} fps ({how}{spread}) but {written}: '
         f'the samples play {fps / rate:.3g}x as fast as the training clips; set '
         f'sample_cfg.fps={rate:.3g}')


def _same_rate(fps, rate) -> bool:
    """Whether samples written at ``fps`` play the clips sampled at ``rate`` at their
    speed: within 2%, or ``fps`` a whole number that is ``rate`` rounded and within 5%
    of it. Configs give frame rates as whole numbers: 25 fps clips at every 3rd frame
    (our recipes' --frame-stride 3) are 8.33 fps, which the configs' 8 plays 0.96x as
    fast, too little to see, and the note came at every run; a speed that shows (12.5
    fps clips written at 8: 0.64x; 1.4 at 1: 0.71x) is still said."""
    diff = abs(fps - rate)
    return diff <= 0.02 * rate or (float(fps).is_integer() and diff <= 0.5
                                   and diff <= 0.05 * rate)


def _clip_rates(manifest, target=None, stride=None, store=None) -> list:
    """The frame rate of each clip of a manifest sampled at ``target`` fps (the step
    SampleClipIndices.stride_for takes) or every ``stride``-th frame, or [] where the
    manifest cannot be read or records no fps. With a store's ``index.json`` (made from
    the manifest), of the clips the store holds only."""
    if not isinstance(manifest, str) or not osp.isfile(manifest):
        return []
    from mmsora.datasets.manifest import load_manifest
    from mmsora.datasets.transforms import SampleClipIndices
    try:
        rows = load_manifest(manifest)
    except Exception:  # (what is wrong with it is said where it is read for the data)
        return []
    sampler = SampleClipIndices(num_frames=1, target_fps=target,
                                frame_stride=None if target else stride)
    if store is not None:
        rows = _held_rows(store, rows)
    return [row['fps'] / sampler.stride_for(row['fps']) for row in rows
            if isinstance(row.get('fps'), (int, float)) and row['fps'] > 0]


def _held_rows(index, rows) -> list:
    """The manifest row of each clip a store holds: its shards' source items less
    those they skipped (a video too short or unreadable was counted in the rates all
    the same); every row where the index does not fit the manifest (changed since)."""
    from collections import Counter
    k = (index.get('meta') or {}).get('clips_per_video') or 1
    shards = index.get('shards')
    if not isinstance(shards, list) or index.get('num_source_items') != len(rows) * k:
        return rows

    def name(i):  # as extract_features.py names a skipped item
        path = rows[i // k]['path']
        return path if k == 1 else f'{path} (clip {i % k + 1} of {k})'

    held = []
    for shard in shards:
        start, stop = shard.get('start'), shard.get('stop')
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop
                <= len(rows) * k):
            return rows
        items, skipped = list(range(start, stop)), Counter(shard.get('skipped') or [])
        for i in list(items):
            if skipped[name(i)] > 0:
                skipped[name(i)] -= 1
                items.remove(i)
        # the rest by file name: the store's paths are under extract_features.py's
        # --data-root, which it does not record
        by_name = Counter(osp.basename(n) for n in skipped.elements())
        for i in list(items):
            if by_name[osp.basename(name(i))] > 0:
                by_name[osp.basename(name(i))] -= 1
                items.remove(i)
        held += [rows[i // k] for i in items]
    return held


def note_caption_encoding(cfg, index, root) -> None:
    """Say when the store's captions were encoded otherwise than the config's text
    encoder encodes prompts at sampling: to another token length (extract_features.py
    --max-length against model.text_encoder.max_length: prompts cut to the other), from
    another hidden state (--hidden-layer against model.text_encoder.hidden_layer: the
    embeddings of another layer, which the model never saw in training) or in another
    precision (--text-encoder-dtype against model.text_encoder.dtype: the embeddings of
    another rounding). The model trains on captions encoded one way and is sampled with
    prompts encoded the other, without a word. The hidden layer and the dtype are
    compared for a store that records its text encoder (extract_features.py's), which
    encoded in float32 where it records no dtype; one that records no hidden layer (an
    older mmsora's) is not compared for it. A layer's positive index and its negative
    one (CLIP-L's 11 and -2) are one hidden state where the store's text encoder
    folder and the config's are both here (their layer counts)."""
    encoder = cfg.model.get('text_encoder') or {}
    if not hasattr(encoder, 'get'):
        return
    meta = index.get('meta') or {}
    recorded = bool(meta.get('text_encoder'))
    # (None, for either, is the last hidden state, as HFTextEncoder's float32 is an
    # unset dtype: both compared as values)
    length, our_length = (index.get('text_shape') or [None])[0], encoder.get('max_length')
    layer, our_layer = meta.get('hidden_layer', _UNRECORDED), encoder.get('hidden_layer')
    dtype = meta.get('text_encoder_dtype', UNRECORDED_TEXT_ENCODER_DTYPE)
    given = _dtype_name(encoder.get('dtype'))
    our_dtype = given or UNRECORDED_TEXT_ENCODER_DTYPE
    from mmsora.models.text_encoders.hf_text_encoder import same_hidden_layers
    # (key, whether the store's and the config's differ, the store's, the config's,
    # the config's in words, the extraction option, how the store holds its captions,
    # how prompts are encoded at sampling)
    settings = (
        ('max_length', isinstance(length, int) and isinstance(our_length, int)
         and length != our_length, length, our_length, our_length, '--max-length {}',
         'to {} tokens', 'cut to {} tokens'),
        # (one layer's positive and negative indices are one where both encoders'
        # folders are here: their layer counts)
        ('hidden_layer', recorded and layer is not _UNRECORDED
         and all(n is None or type(n) is int for n in (layer, our_layer))
         and not same_hidden_layers(
             (meta.get('text_encoder_kind', 't5'), layer, meta.get('text_encoder')),
             (encoder.get('kind', 't5'), our_layer, encoder.get('pretrained_path'))),
         layer, our_layer, our_layer if our_layer is not None else
         f'unset ({_hidden_state(None)})',
         '--hidden-layer {}' if layer is not None else 'without --hidden-layer',
         f'from {_hidden_state(layer)}', f'taken from {_hidden_state(our_layer)}'),
        ('dtype', recorded and isinstance(dtype, str) and isinstance(our_dtype, str)
         and dtype != our_dtype, dtype, our_dtype,
         given or f'unset ({UNRECORDED_TEXT_ENCODER_DTYPE})', '--text-encoder-dtype {}',
         'in {}', 'encoded in {}'))
    for key, differ, stored, ours, said, option, held, sampled in settings:
        if differ:
            note(f'{root}: the captions were encoded {held.format(stored)} '
                 f'(extract_features.py {option.format(stored)}) but '
                 f'model.text_encoder.{key} is {said}: prompts are '
                 f'{sampled.format(ours)} at sampling; set model.text_encoder.{key}='
                 f'{stored} to sample as the model was trained')

_UNRECORDED = object()


def _dtype_name(value):
    """A text encoder's dtype as extract_features.py records it: HFTextEncoder takes
    any name of torch's (``'half'``, ``torch.float16``: float16, which a float16 store
    records); other values as they are."""
    import torch
    found = getattr(torch, value, None) if isinstance(value, str) else value
    return str(found).replace('torch.', '') if isinstance(found, torch.dtype) else value


def _hidden_state(layer) -> str:
    """A text encoder's hidden state (HFTextEncoder.hidden_layer) in words."""
    return ('the last hidden state after the final norm' if layer is None
            else f'hidden state {layer}')
