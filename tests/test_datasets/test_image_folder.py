import numpy as np
import pytest
import torch
from PIL import Image

from mmsora.datasets import center_crop_arr, scan_image_folder
from mmsora.registry import DATASETS


def test_center_crop_arr_box_then_crop():
    # 8x4 image, target 2: one 2x box downsample (min side 4 >= 2*2) to 4x2, the
    # bicubic resize is to the same size (scale 1), then columns 1..2 are kept.
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 64, (4, 8, 3)) * 4  # 2x2 block sums divisible by 4: exact means
    box = arr.reshape(2, 2, 4, 2, 3).mean((1, 3))  # (2, 4, 3)
    expected = box[:, 1:3]
    out = center_crop_arr(Image.fromarray(arr.astype(np.uint8)), 2)
    np.testing.assert_array_equal(np.asarray(out), expected.astype(np.uint8))


def test_center_crop_arr_sizes():
    # 300x200 → box to 150x100 → bicubic to 96x64 → crop x from 16.
    img = Image.new('RGB', (300, 200), (10, 200, 30))
    out = center_crop_arr(img, 64)
    assert out.size == (64, 64)
    assert (np.asarray(out) == (10, 200, 30)).all()
    assert center_crop_arr(Image.new('RGB', (33, 50)), 16).size == (16, 16)


def test_scan_image_folder(image_folder, tmp_path):
    classes, samples = scan_image_folder(image_folder)
    assert classes == ['a', 'b']
    assert [s for s, _ in samples][:3] == ['a/a0.png', 'a/a1.png', 'a/a2.png']
    assert [lb for _, lb in samples] == [0, 0, 0, 1, 1, 1, 1]  # broken.png included
    with pytest.raises(FileNotFoundError, match='missing'):
        scan_image_folder(str(tmp_path / 'missing'))
    (tmp_path / 'empty' / 'c').mkdir(parents=True)
    with pytest.raises(ValueError, match='holds no images'):
        scan_image_folder(str(tmp_path / 'empty'))


def test_image_folder_dataset(image_folder):
    ds = DATASETS.build(dict(type='ImageFolderDataset', data_root=image_folder,
                             image_size=16, seed=0))
    item = ds[0]
    assert item['images'].shape == (3, 16, 16) and item['labels'] == 0
    assert item['images'].min() >= -1 and item['images'].max() <= 1
    ref = np.asarray(center_crop_arr(Image.open(f'{image_folder}/a/a0.png').convert('RGB'), 16))
    ref = torch.from_numpy(ref.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    seen = {0: 0, 1: 0}
    for _ in range(40):
        x = ds[0]['images']
        flipped = torch.allclose(x, ref.flip(-1))
        assert flipped or torch.allclose(x, ref)
        seen[flipped] += 1
    assert seen[0] and seen[1]
    broken = [i for i, (s, _) in enumerate(ds.samples) if s.endswith('broken.png')][0]
    with pytest.raises(ValueError, match='broken.png'):
        ds[broken]


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit grayscale PNG (mode I;16) came out almost white: convert('RGB')
    clips its values at 255. 8-bit pictures load as before (torchvision's loader)."""
    from PIL import Image

    from mmsora.datasets.image_folder import load_image
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / 'g16.png')
    rgb = np.asarray(load_image(str(tmp_path / 'g16.png')))
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_allclose(rgb[..., 0], ramp / 257.0, atol=0.51)
    eight = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(eight).save(tmp_path / 'rgb.png')
    Image.fromarray(eight[..., 0]).save(tmp_path / 'l.png')
    assert np.array_equal(np.asarray(load_image(str(tmp_path / 'rgb.png'))), eight)
    assert np.array_equal(np.asarray(load_image(str(tmp_path / 'l.png')))[..., 1],
                          eight[..., 0])
