"""tools/infer.py (init_model) on a Stable Cascade run whose decoder folder (Stage B or
Stage A) has its config.json but no weights: the decoder loads only at the first
decode, after the whole sampling, and the folder was named only then. The decoder's
own check_folder (tools/train.py's check before a run) now runs where init_model
checks the VAE's folder, before the weights load and any sampling."""
import os
import os.path as osp

import pytest

from mmsora.apis import init_model
from mmsora.utils.tiny_checkpoints import make_tiny_stable_cascade_decoder

CONFIG = 'configs/stable_cascade/stable_cascade_video_tiny_1xb2_60_toy.py'


def options(folder):
    return {'model.vae.pretrained_path': folder,
            'model.text_encoder': None}  # (its CLIP folder: not needed here)


def test_a_decoder_folder_without_weights_is_refused_before_sampling(repo_root, tmp_path):
    folder = make_tiny_stable_cascade_decoder(str(tmp_path / 'sc'))
    checkpoint = str(tmp_path / 'run' / 'iter_1.pth')  # (not there: named after the check)
    with pytest.raises(FileNotFoundError, match='iter_1.pth'):  # whole: passes the check
        init_model(osp.join(repo_root, CONFIG), checkpoint, cfg_options=options(folder))
    os.remove(tmp_path / 'sc' / 'decoder_lite' / 'diffusion_pytorch_model.safetensors')
    with pytest.raises(ValueError, match=r"^Stage B folder '.*/decoder_lite' has config\.json "
                                         r'but no weights file \(.*model\.vae\.decoder_'
                                         r'subfolder=decoder_lite\)$'):
        init_model(osp.join(repo_root, CONFIG), checkpoint, cfg_options=options(folder))
