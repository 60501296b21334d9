"""The real feature networks' loading code, on random weights saved in the real formats."""
import numpy as np
import pytest
import torch

from mmsora.evaluation import I3DTorchScript, InceptionV3FID
from mmsora.evaluation.extractors.i3d import resize_center_crop
from mmsora.evaluation.extractors.inception import resize_bilinear_tf1


def test_tf1_bilinear_resize_closed_form():
    # TensorFlow 1.x maps output pixel i to input i * in / out (no half-pixel shift):
    # upsampling [0, 10] by 4 gives 0, 2.5, 5, 7.5, then the edge value held.
    x = torch.tensor([0.0, 10.0]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    out = resize_bilinear_tf1(x, (4, 4))
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0, 5, 10, 10])
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    np.testing.assert_allclose(resize_bilinear_tf1(x, (2, 2))[0, 0, 0].numpy(), [0, 2])


def test_inception_loads_a_pytorch_fid_style_state_dict(tmp_path):
    torch.manual_seed(0)
    net = InceptionV3FID(random_weights=True)
    state = net.state_dict()
    # pytorch-fid's file predates BatchNorm's num_batches_tracked buffers.
    state = {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    assert 'Mixed_7c.branch_pool.conv.weight' in state and state['fc.weight'].shape == (1008, 2048)
    path = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
    torch.save(state, path)
    loaded = InceptionV3FID(weights=str(path))
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    out = loaded(torch.randint(0, 256, (1, 3, 32, 24), dtype=torch.uint8))
    assert out['features'].shape == (1, 2048) and out['logits'].shape == (1, 1008)
    # The IS logits leave the classifier's bias out (ADM evaluator, torch-fidelity).
    torch.testing.assert_close(out['logits'], out['features'] @ loaded.fc.weight.T)
    with pytest.raises(ValueError, match='uint8'):
        loaded(torch.zeros(1, 3, 8, 8))
    torch.save({k: v for k, v in state.items() if k != 'fc.bias'}, path)
    with pytest.raises(ValueError, match=r'is not the FID Inception\'s weights \(1 of its '
                                         r'\d+ entries missing: fc.bias\)'):
        InceptionV3FID(weights=str(path))


class FakeI3D(torch.nn.Module):
    """StyleGAN-V's i3d_torchscript.pt signature: (videos, rescale, resize, return_features)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert x.shape[-1] == 224 and x.shape[-2] == 224
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_i3d_torchscript_loads_and_preprocesses(tmp_path):
    path = tmp_path / 'i3d_torchscript.pt'
    torch.jit.save(torch.jit.script(FakeI3D()), str(path))
    i3d = I3DTorchScript(weights=str(path))
    videos = torch.full((2, 3, 4, 16, 24), 255, dtype=torch.uint8)
    out = i3d(videos)['features']
    assert out.shape == (2, 400)
    # All-white clips are 1 in [-1, 1] after preprocessing.
    fake = torch.jit.load(str(path))
    torch.testing.assert_close(out, fake.proj(torch.ones(2, 3)))
    with pytest.raises(FileNotFoundError, match='i3d_torchscript'):
        I3DTorchScript(weights=str(tmp_path / 'missing.pt'))


def test_resize_center_crop_keeps_the_middle():
    x = torch.zeros(1, 1, 2, 4, 8)
    x[..., 2:6] = 1                       # a band in the middle half of the width
    out = resize_center_crop(x, 4)        # shorter side 4 -> 4x8, crop columns 2..5
    assert out.shape == (1, 1, 2, 4, 4)
    assert torch.all(out == 1)


def test_clip_embedder_matches_transformers_processor(tmp_path):
    transformers = pytest.importorskip('transformers')
    from mmsora.evaluation import CLIPEmbedder
    from tests.tiny_models import make_tiny_clip
    embedder = CLIPEmbedder(make_tiny_clip(tmp_path / 'clip'))
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 30, 3), dtype=np.uint8)
    # transformers' own (PIL) preprocessing: shortest edge, center crop, CLIP mean/std.
    processor = transformers.CLIPImageProcessor(size={'shortest_edge': 16},
                                                crop_size={'height': 16, 'width': 16})
    reference = processor(images=list(images), return_tensors='pt')['pixel_values']
    ours = embedder.preprocess(torch.from_numpy(images).permute(0, 3, 1, 2))
    # torch's antialiased bicubic vs PIL's: within ~1 grey level of 255.
    assert (ours - reference).abs().max() < 0.03
    out = embedder.model.get_image_features(pixel_values=reference)
    expected = out if isinstance(out, torch.Tensor) else out.pooler_output
    got = embedder.encode_images(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert torch.nn.functional.cosine_similarity(got, expected).min() > 0.9999


def test_wrong_weight_files_are_named_in_one_line(tmp_path):
    """A training checkpoint given as Inception weights gave a 48-line load_state_dict
    error; the Inception file given to I3D failed in torch.jit.load after the first
    sampling batch, the I3D file given to Inception with a weights_only message."""
    from mmsora.evaluation import FID, FVD
    from mmsora.utils.error_messages import explain_error
    ckpt, inception, i3d = (str(tmp_path / n) for n in ('iter_10.pth', 'incep.pth', 'i3d.pt'))
    torch.save(dict(meta=dict(iter=10), state_dict=dict(w=torch.zeros(2))), ckpt)
    torch.save(dict(w=torch.zeros(2)), inception)
    torch.jit.save(torch.jit.script(FakeI3D()), i3d)
    cases = [(lambda: InceptionV3FID(weights=ckpt), f"{ckpt} is not the FID Inception's "
              "weights (a training checkpoint): give pytorch-fid's pt_inception-2015-12-05"),
             (lambda: InceptionV3FID(weights=i3d), f"{i3d} is a TorchScript file (I3D's "
              "i3d_torchscript.pt?), not Inception weights: give pytorch-fid's "
              'pt_inception-2015-12-05'),
             (lambda: I3DTorchScript(weights=inception), f'{inception} is not a TorchScript '
              "file (a plain torch checkpoint or state dict, such as Inception's weights?): "
              "FVD's I3D is StyleGAN-V's i3d_torchscript.pt"),
             # before any sampling: from the zip directory, nothing loaded
             (FID(extractor=dict(type='InceptionV3FID', weights=i3d),
                  reference='unused.npz').check_inputs, f'{i3d} is a TorchScript file'),
             (FVD(extractor=dict(type='I3DTorchScript', weights=inception),
                  reference='unused.npz').check_inputs, f'{inception} is not a TorchScript')]
    for build, message in cases:
        with pytest.raises(ValueError) as info:
            build()
        assert explain_error(info.value).startswith(message), explain_error(info.value)
        assert '\n' not in explain_error(info.value)
