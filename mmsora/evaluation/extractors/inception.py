"""The FID Inception-v3: TensorFlow's 2015-12-05 Inception graph ported to PyTorch.

This is the network behind every published FID (TTUR's ``fid.py``, the ADM evaluator
that scored DiT and SiT, pytorch-fid, torch-fidelity). The port follows torch-fidelity's
``FeatureExtractorInceptionV3`` (Obukhov et al., Apache-2.0): torchvision's Inception-v3
blocks with TensorFlow's quirks (average pools that ignore padding, a max pool in the
last block, 1008 classes) and TensorFlow 1.x's bilinear resize to 299x299.

Weights: ``pt_inception-2015-12-05-6726825d.pth`` from pytorch-fid's release
``fid_weights``, byte-identical to torch-fidelity's
``weights-inception-2015-12-05-6726825d.pth`` (same SHA-256 prefix ``6726825d``): a
plain state dict, read here with ``torch.load(weights_only=True)`` and loaded with
``strict=True``. Nothing is downloaded.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmsora.registry import MODELS

__all__ = ['InceptionV3FID', 'resize_bilinear_tf1']

INCEPTION_FILE = ("pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a plain state dict; "
                  'see docs/evaluation.md)')


def resize_bilinear_tf1(x: torch.Tensor, size) -> torch.Tensor:
    """TensorFlow 1.x ``resize_bilinear`` (align_corners=False): source pixel of output
    pixel i is ``i * in / out`` (no half-pixel shift, unlike ``F.interpolate``)."""
    def axis(n_in, n_out):
        src = torch.arange(n_out, dtype=torch.float32, device=x.device) * (n_in / n_out)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    (h_lo, h_hi, h_w), (w_lo, w_hi, w_w) = axis(x.shape[2], size[0]), axis(x.shape[3], size[1])
    x = x[:, :, h_lo] * (1 - h_w[:, None]) + x[:, :, h_hi] * h_w[:, None]   # (N, C, H', W)
    return x[..., w_lo] * (1 - w_w) + x[..., w_hi] * w_w                    # (N, C, H', W')


# --------------------------------------------------------------------------- #
#                                  Blocks                                     #
# --------------------------------------------------------------------------- #
class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TensorFlow's) -> ReLU."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def tf_avg_pool(x):
    """3x3 average pool that, as TensorFlow's, leaves padded zeros out of the mean."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(tf_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        dbl = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(tf_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                          F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Last blocks; TensorFlow's graph max-pools in the second one (``max_pool``)."""

    def __init__(self, in_channels, max_pool=False):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool
                else tf_avg_pool(x))
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pool),
        ], 1)


# --------------------------------------------------------------------------- #
#                                 Network                                     #
# --------------------------------------------------------------------------- #
@MODELS.register_module()
class InceptionV3FID(nn.Module):
    """Inception-v3 of FID and IS: uint8 pictures -> pool-3 features and logits.

    Args:
        weights (str): Local ``pt_inception-2015-12-05-6726825d.pth`` (see the module
            docstring); required unless ``random_weights``.
        random_weights (bool): Leave the network random, without ``weights`` (tests
            only: its FID and IS are not comparable with anything). An extractor
            config without weights used to mean this silently, and a run scored
            'FID: 0.0000' with random features.
    """

    INPUT_SIZE = 299
    # The argument that names the weights, and what to give there (the metrics refuse
    # a config without it before any sampling: SampleMetric.check_inputs).
    weights_arg = 'weights'
    weights_file = INCEPTION_FILE

    def __init__(self, weights: Optional[str] = None, random_weights: bool = False):
        super().__init__()
        if weights is None and not random_weights:
            raise ValueError(f'InceptionV3FID needs weights: give {INCEPTION_FILE} '
                             '(random_weights=True gives a random network, tests only)')
        if weights is not None and random_weights:
            raise ValueError('InceptionV3FID: weights and random_weights=True exclude each '
                             'other: drop random_weights')
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)
        if weights is not None:
            self.load_state_dict(self._read_weights(weights), strict=True)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def check_weights(weights: str) -> None:
        """Raise, without loading it, for a TorchScript file (I3D's) given as the
        Inception weights."""
        from .i3d import is_torchscript
        if is_torchscript(weights):
            raise ValueError(f'{weights} is a TorchScript file (I3D\'s '
                             'i3d_torchscript.pt?), not Inception weights: give '
                             f'{INCEPTION_FILE}')

    def _read_weights(self, weights: str) -> Dict[str, torch.Tensor]:
        """The state dict in ``weights``, refused in one line if it is not this
        network's (a training checkpoint, another network's weights)."""
        from mmsora.utils.checkpoint import load_checkpoint_file
        self.check_weights(weights)
        state = load_checkpoint_file(weights)
        # pytorch-fid's file predates BatchNorm's num_batches_tracked (filled in).
        expected = {k for k in self.state_dict() if not k.endswith('num_batches_tracked')}
        found = set(state) if isinstance(state, dict) else set()
        missing, unexpected = sorted(expected - found), sorted(found - expected - set(
            self.state_dict()))
        if 'state_dict' in found or 'meta' in found:
            what = 'a training checkpoint'
        elif missing:
            what = (f'{len(missing)} of its {len(expected)} entries missing: '
                    + ', '.join(missing[:3]) + (', ...' if len(missing) > 3 else ''))
        elif unexpected:
            what = 'unexpected entries: ' + ', '.join(unexpected[:3])
        else:
            return state
        raise ValueError(f'{weights} is not the FID Inception\'s weights ({what}): '
                         f'give {INCEPTION_FILE}')

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features of pictures.

        Args:
            images: uint8 (N, 3, H, W), any size (resized to 299 as TensorFlow does).

        Returns:
            ``features`` (N, 2048): pool-3 activations (FID); ``logits`` (N, 1008):
            the classifier without its bias, as the ADM evaluator and torch-fidelity
            compute the Inception Score.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError('InceptionV3FID takes uint8 pictures (N, 3, H, W), got '
                             f'{images.dtype} {tuple(images.shape)}')
        x = images.to(self.fc.weight.device, torch.float32)
        x = resize_bilinear_tf1(x, (self.INPUT_SIZE, self.INPUT_SIZE))
        x = (x - 128) / 128                                   # (N, 3, 299, 299)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)          # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)          # (N, 192, 35, 35)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)                                      # ... (N, 2048, 8, 8)
        features = x.mean(dim=(2, 3))                         # (N, 2048)
        return dict(features=features, logits=features @ self.fc.weight.T)
