"""I3D features for FVD (Unterthiner et al. 2018), from StyleGAN-V's TorchScript file.

``i3d_torchscript.pt`` (StyleGAN-V, Skorokhodov et al. 2022; the same file Latte's,
DIGAN's and cd-fvd's evaluation code load) is the Kinetics-400 I3D of the original FVD
code exported to TorchScript. Called with ``return_features=True`` it returns the 400
logits before the softmax, the features FVD is defined on. TorchScript runs no Python
pickle code; ``torch.jit.load`` reads it from a local path, nothing is downloaded.
"""
import math
from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsora.registry import MODELS

__all__ = ['I3DTorchScript', 'resize_center_crop', 'is_torchscript']

I3D_FILE = "StyleGAN-V's i3d_torchscript.pt, see docs/evaluation.md"


def resize_center_crop(videos: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side to ``size`` (bilinear) and center-crop to a square.

    ``videos`` is (N, C, T, H, W). This is the preprocessing of
    common_metrics_on_video_quality's FVD code (its ``preprocess_single``, which
    Open-Sora-Plan vendors), which then calls the detector with ``rescale=False,
    resize=False``. StyleGAN-V's and Latte's FVD code do not crop: they give the
    detector uint8 clips with ``rescale=True, resize=True``, and it resizes each whole
    frame to 224x224. Square clips come out the same either way (up to interpolation
    details); on non-square clips the features differ: a centre square here, the
    whole frame squeezed to a square there.
    """
    n, c, t, h, w = videos.shape
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    frames = videos.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    frames = F.interpolate(frames, size=target, mode='bilinear', align_corners=False)
    top, left = (target[0] - size) // 2, (target[1] - size) // 2
    frames = frames[:, :, top:top + size, left:left + size]
    return frames.reshape(n, t, c, size, size).permute(0, 2, 1, 3, 4)


def is_torchscript(path: str) -> bool:
    """Whether a file is a TorchScript archive (a zip with ``constants.pkl`` and
    ``code/``), from its zip directory only; ``torch.save`` files have neither."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name.partition('/')[2] for name in archive.namelist()]
    except (zipfile.BadZipFile, OSError):
        return False
    return 'constants.pkl' in names or any(n.startswith('code/') for n in names)


@MODELS.register_module()
class I3DTorchScript(nn.Module):
    """FVD's I3D: uint8 clips -> 400-d features.

    Args:
        weights (str): Local ``i3d_torchscript.pt`` (StyleGAN-V's release).
        size (int): Frames are resized (shorter side) and center-cropped to this
            square before the network; 224 is what the features were trained on.
    """

    # The argument that names the weights, and what to give there (see
    # SampleMetric.check_inputs).
    weights_arg = 'weights'
    weights_file = I3D_FILE

    def __init__(self, weights: str, size: int = 224):
        super().__init__()
        self.check_weights(weights)
        try:
            self.detector = torch.jit.load(weights, map_location='cpu').eval()
        except RuntimeError as e:
            raise ValueError(f'cannot load the I3D TorchScript file {weights} ('
                             f'{str(e).strip().splitlines()[0]}): give {I3D_FILE}') from e
        self.size = size
        self.requires_grad_(False)

    @staticmethod
    def check_weights(weights: str) -> None:
        """Raise, without loading it, for a missing file or one that is no
        TorchScript archive (Inception's weights, a training checkpoint)."""
        import os.path as osp
        if not osp.isfile(weights):
            raise FileNotFoundError(f'I3D TorchScript file not found: {weights} '
                                    f'({I3D_FILE})')
        if not is_torchscript(weights):
            raise ValueError(f'{weights} is not a TorchScript file (a plain torch '
                             'checkpoint or state dict, such as Inception\'s weights?): '
                             f'FVD\'s I3D is {I3D_FILE}')

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features of clips.

        Args:
            videos: uint8 (N, 3, T, H, W).

        Returns:
            ``features`` (N, 400).
        """
        if videos.dtype != torch.uint8 or videos.dim() != 5 or videos.shape[1] != 3:
            raise ValueError('I3DTorchScript takes uint8 clips (N, 3, T, H, W), got '
                             f'{videos.dtype} {tuple(videos.shape)}')
        device = next(iter(self.detector.parameters()), torch.empty(0)).device
        x = videos.to(device, torch.float32) / 127.5 - 1      # [-1, 1]
        x = resize_center_crop(x, self.size)                  # (N, 3, T, 224, 224)
        features = self.detector(x, rescale=False, resize=False, return_features=True)
        return dict(features=features.float())
