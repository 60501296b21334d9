"""Frozen transformers text encoder (T5 or CLIP) read from a local folder.

Text-to-video DiTs condition on the token embeddings of a frozen text encoder: T5-v1.1
XXL in PixArt-alpha and Open-Sora (120 or 300 tokens, padded, with an attention mask),
CLIP ViT-bigG in StableCascade (77 tokens, plus the pooled, projected embedding). The
encoder is loaded lazily and kept out of the trained model's state dict, optimizer and
EMA, like the VAE wrapper. ``tools/extract_features.py`` runs it once, before
training; ``tools/infer.py`` runs it on the prompts.
"""
import os
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmsora.registry import MODELS

__all__ = ['HFTextEncoder', 'same_hidden_state', 'same_hidden_layers', 'hidden_layer_count',
           'text_encoder_folders']

# kind -> (transformers model class, default max_length)
KINDS = {
    't5': ('T5EncoderModel', 120),
    'clip': ('CLIPTextModel', 77),
    'clip_with_projection': ('CLIPTextModelWithProjection', 77),
}
# kinds whose last hidden state (hidden_states[-1]) is last_hidden_state itself: T5's
# stack appends its output after the final norm; CLIP's text tower appends the last
# layer's before it
FINAL_NORM_IN_HIDDEN_STATES = ('t5',)
# The weight files transformers' from_pretrained loads (shards: by their index)
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
                'pytorch_model.bin.index.json')


def same_hidden_state(kind: str, hidden_layer, num_layers: Optional[int] = None):
    """``hidden_layer`` as one value for one hidden state. With the encoder's
    ``num_layers`` (:func:`hidden_layer_count`), an index of its ``hidden_states``
    (``num_layers + 1`` of them: the embeddings, then each layer's output) is counted
    from the end: CLIP-L's penultimate layer, 11 or -2, is -2. Then None (the last,
    after the final norm) for -1 of a kind whose hidden_states[-1] is that one (T5's).
    An index out of range, or a positive one without ``num_layers``, is as it is (the
    encoder says what is wrong with the former)."""
    if type(hidden_layer) is int and type(num_layers) is int and \
            0 <= hidden_layer <= num_layers:
        hidden_layer -= num_layers + 1
    return None if hidden_layer == -1 and kind in FINAL_NORM_IN_HIDDEN_STATES \
        else hidden_layer


# kind -> the config.json model_type values it reads (a whole CLIP model's folder,
# 'clip', holds the text tower too; mT5 is T5's architecture)
MODEL_TYPES = {
    't5': ('t5', 'mt5'),
    'clip': ('clip_text_model', 'clip'),
    'clip_with_projection': ('clip_text_model', 'clip'),
}


def same_hidden_layers(first, second) -> bool:
    """Whether two ``(kind, hidden_layer, folder)`` settings of a text encoder take one
    hidden state: as :func:`same_hidden_state` gives them, and where those differ, with
    each folder's layer count where both folders are here (a positive index and the
    same layer's negative one are one: 11 and -2 of CLIP-L). A folder that is not here
    (a store's from another machine), or two of different layer counts (other models: a
    layer as far from the end is another one), leaves them compared as given."""
    if same_hidden_state(first[0], first[1]) == same_hidden_state(second[0], second[1]):
        return True
    counts = [hidden_layer_count(folder, kind) for kind, _, folder in (first, second)]
    if None in counts or counts[0] != counts[1]:
        return False
    return same_hidden_state(first[0], first[1], counts[0]) == \
        same_hidden_state(second[0], second[1], counts[1])


def hidden_layer_count(pretrained_path, kind: str) -> Optional[int]:
    """The layers of the ``kind`` encoder in ``pretrained_path`` as :class:`HFTextEncoder`
    loads it (its config's ``num_hidden_layers``: T5's ``num_layers``, a CLIP text
    tower's, a whole CLIP folder's ``text_config`` one), or None where that is not known
    here: no such folder, one of another kind's model (the encoder refuses it), no
    transformers. Only the config is read."""
    if not isinstance(kind, str) or kind not in KINDS or \
            not isinstance(pretrained_path, (str, os.PathLike)) or \
            not osp.isdir(pretrained_path):
        return None
    import json
    try:
        model_dir, _ = text_encoder_folders(os.fspath(pretrained_path))
        with open(osp.join(model_dir, 'config.json')) as f:
            model_type = json.load(f).get('model_type')
    except (OSError, ValueError, AttributeError):
        return None
    if model_type not in MODEL_TYPES[kind]:
        return None
    try:
        import transformers
        config_class = getattr(transformers, KINDS[kind][0]).config_class
        # (what from_pretrained reads, without its warning of an mt5 folder read as t5)
        found, _ = config_class.get_config_dict(model_dir, local_files_only=True)
        # (a whole CLIP's text_config; transformers before base_config_key: its name)
        key = getattr(config_class, 'base_config_key', None) or (
            'text_config' if kind != 't5' else '')
        if key and isinstance(found.get(key), dict):
            found = found[key]
        count = config_class.from_dict(found).num_hidden_layers
    except Exception:  # (not known here, whatever the folder holds: transformers 5
        return None  # raises its own validation errors of a config's field types)
    return count if type(count) is int and count >= 0 else None


def text_encoder_folders(path):
    """(model folder, tokenizer folder) of a text encoder folder: the folder itself, or
    a pipeline's ``text_encoder/`` and ``tokenizer/`` (a Hugging Face cache folder: in
    its snapshot)."""
    if not osp.isdir(path):
        raise FileNotFoundError(f'text encoder folder {path!r} does not exist (give a '
                                f'local transformers folder; nothing is downloaded)')
    from mmsora.utils.checkpoint import hub_snapshot
    path = hub_snapshot(path)
    if osp.isfile(osp.join(path, 'config.json')):
        return path, path
    model_dir = osp.join(path, 'text_encoder')
    if osp.isfile(osp.join(model_dir, 'config.json')):
        tok = osp.join(path, 'tokenizer')
        return model_dir, tok if osp.isdir(tok) else model_dir
    raise FileNotFoundError(f'text encoder folder {path!r} has neither config.json nor '
                            f'text_encoder/config.json')


@MODELS.register_module()
class HFTextEncoder(nn.Module):
    """Frozen T5 / CLIP text encoder with its tokenizer, from a LOCAL folder.

    Args:
        pretrained_path (str): Local folder holding the encoder (``config.json`` and
            weights) and its tokenizer files, or a diffusers pipeline folder with
            ``text_encoder/`` and ``tokenizer/`` subfolders. Never fetched from a hub.
        kind (str): ``'t5'`` (T5EncoderModel), ``'clip'`` (CLIPTextModel, pooled =
            ``pooler_output``) or ``'clip_with_projection'``
            (CLIPTextModelWithProjection, pooled = the projected ``text_embeds``, as
            StableCascade's prior uses).
        max_length (int, optional): Tokens per caption; captions are padded to it (the
            mask marks real tokens) and truncated. Default: 120 for T5 (PixArt /
            Open-Sora 1.0), 77 for CLIP.
        hidden_layer (int, optional): Take ``hidden_states[hidden_layer]`` instead of
            the last (final-norm) hidden state; StableCascade uses -1 (before CLIP's
            final layer norm), SD 2 / SDXL use -2. ``hidden_states`` holds the
            embeddings and then each layer's output, so a layer's positive index and
            its negative one are the same state (CLIP-L's 11 and -2; T5's last, its
            ``num_layers`` and -1, is the final-norm one, as None).
        dtype (str, optional): Load the encoder in 'float16' / 'bfloat16' (T5-XXL
            is 9.5 GB in bf16); default float32.
        micro_batch_size (int, optional): Most captions through the encoder at once.
    """

    def __init__(self, pretrained_path: str, kind: str = 't5',
                 max_length: Optional[int] = None, hidden_layer: Optional[int] = None,
                 dtype: Optional[str] = None, micro_batch_size: Optional[int] = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f'text encoder kind must be one of {sorted(KINDS)}, got {kind!r}')
        self.pretrained_path = pretrained_path
        self.kind = kind
        self.max_length = max_length or KINDS[kind][1]
        self.hidden_layer = hidden_layer
        self.torch_dtype = getattr(torch, dtype) if dtype else torch.float32
        self.micro_batch_size = micro_batch_size
        self._long_prompts_noted = False  # (note_long_prompts: once)
        # Built on first use and not registered as a submodule (see AutoencoderKLWrapper).
        self.__dict__['_encoder'] = None
        self.__dict__['_tokenizer'] = None

    # ------------------------------------------------------------------ loading
    def _folders(self):
        """(model folder, tokenizer folder) inside ``pretrained_path``
        (:func:`text_encoder_folders`)."""
        return text_encoder_folders(self.pretrained_path)

    def _load(self):
        try:
            import transformers
        except ImportError:
            raise ImportError('text encoders need the transformers package: '
                              'pip install -r requirements/optional.txt') from None
        model_dir, tok_dir = self._folders()
        self._check_model_type(model_dir)
        if not any(osp.isfile(osp.join(model_dir, name)) for name in WEIGHT_FILES):
            # (transformers' OSError stopped a training run at its first samples, where
            # a VAE folder without weights is a warning: a FileNotFoundError of the folder)
            raise FileNotFoundError(
                f'text encoder folder {model_dir!r} holds a config.json but no weights '
                f'({", ".join(WEIGHT_FILES)}): copy them in beside it, or give the folder '
                'that holds them')
        cls = getattr(transformers, KINDS[self.kind][0])
        encoder, info = cls.from_pretrained(model_dir, local_files_only=True,
                                            dtype=self.torch_dtype, output_loading_info=True)
        missing = sorted(info.get('missing_keys') or ())
        if missing:  # transformers fills them with random values and goes on
            raise ValueError(
                f'text encoder folder {model_dir!r} lacks {len(missing)} weight'
                f'{"s" * (len(missing) != 1)} of a {KINDS[self.kind][0]} (e.g. {missing[0]}): '
                f'they would be random; give the kind it was saved as (kind '
                f'{self.kind!r} now; {", ".join(sorted(KINDS))})')
        tokenizer = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        encoder.requires_grad_(False)
        self.__dict__['_encoder'] = encoder.eval()
        self.__dict__['_tokenizer'] = tokenizer

    def _check_model_type(self, model_dir):
        """Refuse a folder of another kind of model: transformers loads a CLIP folder
        into a T5 (and the reverse) with a warning, all its weights random. A diffusers
        folder (a VAE given as the text encoder) has no ``model_type``: it was refused
        as holding 'a None model'."""
        import json
        try:
            with open(osp.join(model_dir, 'config.json')) as f:
                config = json.load(f)
            model_type = config.get('model_type')
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f'cannot read {osp.join(model_dir, "config.json")}: {e}') from None
        if model_type in MODEL_TYPES[self.kind]:
            return
        if model_type is None:
            name = config.get('_class_name')
            name = name if isinstance(name, str) else None
            holds = (f'a diffusers {name} (its config.json)' if name
                     else 'a config.json without a model_type')
            image = name == 'AutoencoderKL'
            vae = (f' (a VAE goes to extract_features.py {"--vae" if image else "--video-vae"}; '
                   f'in a config, to {"AutoencoderKLWrapper" if image else "VideoVAEWrapper"})'
                   if name and name.startswith('AutoencoderKL') else '')
            raise ValueError(
                f'text encoder folder {model_dir!r} holds {holds}, not a transformers '
                f'{KINDS[self.kind][0]}: give the text encoder\'s folder with its tokenizer, '
                f'or a pipeline folder with text_encoder/ and tokenizer/{vae}')
        fits = [k for k, types in MODEL_TYPES.items() if model_type in types]
        hint = (f'give kind={fits[0]!r} (model.text_encoder.kind; tools/extract_features.py '
                f'--text-encoder-kind {fits[0]})' if fits else
                f'the kinds read are {", ".join(sorted(KINDS))}')
        raise ValueError(f'text encoder folder {model_dir!r} holds a {model_type!r} model '
                         f'(its config.json), not a {self.kind} encoder: {hint}')

    @property
    def encoder(self):
        """The transformers model, loaded on first access."""
        if self.__dict__['_encoder'] is None:
            self._load()
        return self.__dict__['_encoder']

    @property
    def tokenizer(self):
        if self.__dict__['_tokenizer'] is None:
            self._load()
        return self.__dict__['_tokenizer']

    def train(self, mode=True):
        """Stay in eval mode: the encoder is frozen."""
        return super().train(False)

    def offload(self) -> bool:
        """Move a loaded encoder off its GPU to the CPU, where the next :meth:`encode`
        on a GPU takes it back; whether it moved. The samples drawn during training
        left T5-XXL (9.5 GB in bf16) on rank 0's card for the rest of the run."""
        encoder = self.__dict__['_encoder']
        param = next(encoder.parameters(), None) if encoder is not None else None
        if param is None or param.device.type == 'cpu':
            return False
        encoder.to('cpu')
        return True

    # ------------------------------------------------------------------ shapes
    @property
    def embed_dim(self):
        """Width of the token embeddings (``caption_channels`` of a text DiT)."""
        return self.encoder.config.hidden_size if self.kind != 't5' else self.encoder.config.d_model

    @property
    def pooled_dim(self) -> Optional[int]:
        if self.kind == 't5':
            return None
        if self.kind == 'clip_with_projection':
            return self.encoder.config.projection_dim
        return self.encoder.config.hidden_size

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def longer_than_max_length(self, captions: Sequence[str]) -> list:
        """The positions of the captions whose tokens (the end token included) do not
        fit in ``max_length``: :meth:`encode` cuts them there, as Open-Sora's T5 does
        without a word (tools/extract_features.py says how many, before encoding)."""
        lengths = [len(ids) for ids in self.tokenizer(list(captions))['input_ids']]
        return [i for i, n in enumerate(lengths) if n > self.max_length]

    def note_long_prompts(self, prompts: Sequence[str]) -> None:
        """Say, once per encoder, that prompts longer than ``max_length`` tokens are
        cut there (:meth:`encode` cuts them; tools/infer.py --prompt and
        tools/text2video.py did without a word). Called where prompts are sampled
        (``LatentDiffusion.sample``), not per training batch: a run's captions are
        counted at extraction (tools/extract_features.py)."""
        if self._long_prompts_noted:
            return
        long = self.longer_than_max_length(prompts)
        if not long:
            return
        self._long_prompts_noted = True
        from mmsora.utils.cli import note
        longest = max(len(ids) for ids in self.tokenizer(
            [prompts[i] for i in long])['input_ids'])
        note(f'{len(long)} of {len(prompts)} prompts {"is" if len(long) == 1 else "are"} '
             f'longer than the text encoder\'s max_length, {self.max_length} tokens (the '
             f'longest {longest}, e.g. {prompts[long[0]][:60]!r}), and cut there; set a '
             'larger model.text_encoder.max_length to keep them whole')

    def encode(self, captions: Sequence[str], device=None
               ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Token embeddings of captions.

        Args:
            captions: N strings.
            device: Where to run the encoder (it is moved there); default its own.

        Returns:
            ``(embeds, mask, pooled)``: float32 (N, max_length, D) token embeddings,
            bool (N, max_length) mask (True for real tokens), and float32 (N, D2)
            pooled embeddings (None for T5).
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError('captions must be a sequence of strings')
        encoder = self.encoder.to(device) if device is not None else self.encoder
        device = next(encoder.parameters()).device
        embeds, masks, pooled = [], [], []
        n = self.micro_batch_size or max(len(captions), 1)
        for start in range(0, len(captions), n):
            tokens = self.tokenizer(
                list(captions[start:start + n]), padding='max_length', truncation=True,
                max_length=self.max_length, return_tensors='pt')
            ids = tokens['input_ids'].to(device)
            mask = tokens['attention_mask'].to(device)
            out = encoder(input_ids=ids, attention_mask=mask,
                          output_hidden_states=self.hidden_layer is not None)
            hidden = (out.last_hidden_state if self.hidden_layer is None
                      else out.hidden_states[self.hidden_layer])
            embeds.append(hidden.float())
            masks.append(mask.bool())
            if self.kind == 'clip':
                pooled.append(out.pooler_output.float())
            elif self.kind == 'clip_with_projection':
                pooled.append(out.text_embeds.float())
        if not embeds:
            raise ValueError('no captions to encode')
        return (torch.cat(embeds), torch.cat(masks),
                torch.cat(pooled) if pooled else None)
