"""CLIP image and text embeddings for the CLIP score (Radford et al. 2021), from a
local transformers CLIP folder (e.g. a download of ``openai/clip-vit-large-patch14``,
torchmetrics' default for its CLIPScore, or ``openai/clip-vit-base-patch32``).

The folder holds ``config.json``, the weights (``model.safetensors`` or
``pytorch_model.bin``), the tokenizer files and, usually, ``preprocessor_config.json``
whose mean and std are used. Pictures are resized (shorter side) and centre-cropped
to the model's own input size, ``config.json``'s ``vision_config.image_size`` (OpenAI's
folders give the same number as ``shortest_edge`` and ``crop_size`` in
``preprocessor_config.json``). Loaded with ``local_files_only=True``.
The folder must hold a whole CLIP model (``CLIPModel``: image and text towers); a
text encoder's folder (T5, or a CLIP text tower alone) is refused from its
``config.json`` before loading.
"""
import json
import os.path as osp
from typing import Dict, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsora.registry import MODELS
from mmsora.utils.checkpoint import folder_model, read_json_config

__all__ = ['CLIPEmbedder']

# OpenAI CLIP's pixel statistics, used when the folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# What a folder of a CLIP tower alone holds, by its config.json's model_type.
_TOWERS = dict(clip_text_model='a CLIP text encoder only (what extract_features.py '
               '--text-encoder-kind clip reads), no image tower',
               clip_vision_model='a CLIP image encoder only, no text tower')


def check_clip_folder(folder: str) -> None:
    """Refuse a folder that is not a whole transformers CLIP model, from its
    ``config.json``. Before, transformers loaded a T5 folder ('You are using a model of
    type t5 to instantiate a model of type clip') or a CLIP text encoder's folder into
    a ``CLIPModel`` with a table of missing keys, the weights it lacked random, and
    the CLIP score came out as 0.0000 with exit status 0."""
    need = ('the CLIP score needs a whole transformers CLIPModel (image and text '
            'towers) with its tokenizer, e.g. openai/clip-vit-large-patch14 saved locally')
    config_file = osp.join(folder, 'config.json')
    if not osp.isfile(config_file):
        raise ValueError(f'CLIP folder {folder!r} has no config.json (not a transformers '
                         f'model folder): {need}')
    config = read_json_config(config_file)
    if config is None:
        raise ValueError(f'CLIP folder {folder!r}: its config.json cannot be read as a '
                         f'JSON object: {need}')
    holds = folder_model(folder)
    if config.get('model_type') == 'clip' or holds is None:  # None: it does not say
        return
    tower = _TOWERS.get(config.get('model_type'))
    raise ValueError(f'CLIP folder {folder!r} holds a {holds} (its config.json)'
                     f'{": " + tower if tower else ""}, not a whole CLIP model: {need}')


def _embeddings(out):
    """transformers < 5 returns the projected embeddings, >= 5 an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@MODELS.register_module()
class CLIPEmbedder(nn.Module):
    """Frozen CLIP: uint8 pictures and prompts -> embeddings in one space.

    Args:
        pretrained_path (str): Local transformers CLIP folder (see module docstring).
        batch_size (int): Most pictures or prompts through CLIP at once.
    """

    # The argument that names the weights, and what to give there (see
    # SampleMetric.check_inputs).
    weights_arg = 'pretrained_path'
    weights_file = ('a local transformers CLIP folder, e.g. openai/clip-vit-large-patch14 '
                    'saved with save_pretrained (see docs/evaluation.md)')

    def __init__(self, pretrained_path: str, batch_size: int = 64):
        super().__init__()
        import transformers
        if not osp.isdir(pretrained_path):
            raise FileNotFoundError(f'CLIP folder not found: {pretrained_path} (a local '
                                    'transformers CLIP folder; see docs/evaluation.md)')
        self.check_pretrained_path(pretrained_path)
        self.model = transformers.CLIPModel.from_pretrained(
            pretrained_path, local_files_only=True).eval().requires_grad_(False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            pretrained_path, local_files_only=True)
        size, mean, std = self.model.config.vision_config.image_size, CLIP_MEAN, CLIP_STD
        preprocessor = osp.join(pretrained_path, 'preprocessor_config.json')
        if osp.isfile(preprocessor):
            with open(preprocessor) as f:
                pre = json.load(f)
            mean, std = pre.get('image_mean', mean), pre.get('image_std', std)
        self.size = size
        self.register_buffer('mean', torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.batch_size = batch_size
        self.max_length = self.model.config.text_config.max_position_embeddings

    @staticmethod
    def check_pretrained_path(pretrained_path: str) -> None:
        """Raise, without loading it, for a folder that is not a whole CLIP model
        (:func:`check_clip_folder`)."""
        check_clip_folder(pretrained_path)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> CLIP's input: shorter side bicubic-resized to the
        model's size, center crop, normalised (CLIPImageProcessor's steps). The longer
        side is ``int(size * long / short)``, rounded down as transformers'
        ``get_resize_output_image_size`` does (rounding to nearest moved the crop by a
        pixel on some non-square frames, e.g. 240x426)."""
        x = images.to(self.mean.device, torch.float32) / 255
        h, w = x.shape[-2:]
        longer = int(self.size * max(h, w) / min(h, w))
        target = (self.size, longer) if h <= w else (longer, self.size)
        x = F.interpolate(x, size=target, mode='bicubic', align_corners=False,
                          antialias=True).clamp(0, 1)
        top, left = (target[0] - self.size) // 2, (target[1] - self.size) // 2
        x = x[..., top:top + self.size, left:left + self.size]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pictures (N, 3, H, W) -> image embeddings (N, D)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError('CLIPEmbedder takes uint8 pictures (N, 3, H, W), got '
                             f'{images.dtype} {tuple(images.shape)}')
        outs = [_embeddings(self.model.get_image_features(
                    pixel_values=self.preprocess(images[i:i + self.batch_size])))
                for i in range(0, len(images), self.batch_size)]
        return torch.cat(outs).float()

    @torch.no_grad()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> text embeddings (N, D); longer prompts are truncated to CLIP's
        77 tokens."""
        outs = []
        for i in range(0, len(prompts), self.batch_size):
            tokens = self.tokenizer(list(prompts[i:i + self.batch_size]), padding=True,
                                    truncation=True, max_length=self.max_length,
                                    return_tensors='pt').to(self.mean.device)
            outs.append(_embeddings(self.model.get_text_features(
                input_ids=tokens['input_ids'], attention_mask=tokens['attention_mask'])))
        return torch.cat(outs).float()

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``features``: image embeddings of uint8 pictures (N, 3, H, W)."""
        return dict(features=self.encode_images(images))
