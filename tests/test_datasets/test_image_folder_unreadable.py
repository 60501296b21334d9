"""Training straight from images (ImageFolderDataset, DiT's train.py way) stopped at
the first broken file, and the error said nothing of SkipCorruptDataset, which
skips such files (walk-through p)."""
import numpy as np
import pytest
from mmengine.logging import MMLogger
from PIL import Image
from torch.utils.data import DataLoader

from mmsora.datasets import ImageFolderDataset, SkipCorruptDataset
from mmsora.utils.error_messages import explain_error
from tests.tiny_data import logged_messages

HINT = ("; to skip unreadable images instead, wrap the dataset: train_dataloader = "
        "dict(dataset=dict(_delete_=True, type='SkipCorruptDataset', "
        "dataset=dict(type='ImageFolderDataset', data_root=...)))")


@pytest.fixture
def broken_folder(tmp_path):
    """An ImageFolder tree whose item 1 is a JPEG cut short."""
    root = tmp_path / 'train' / 'n01440764'
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(root / f'{i}.jpg')
    (root / '1.jpg').write_bytes(b'\xff\xd8\xff\xe0 truncated jpeg')
    return str(tmp_path / 'train'), str(root / '1.jpg')


@pytest.mark.parametrize('workers', [0, 1])
def test_the_tools_error_names_the_file_and_how_to_skip(broken_folder, workers):
    """What tools/train.py prints (explain_error), in the process and from a
    DataLoader worker (whose error comes back as its message)."""
    root, broken = broken_folder
    dataset = ImageFolderDataset(root, image_size=16, random_flip=False)
    loader = DataLoader(dataset, batch_size=3, num_workers=workers)
    with pytest.raises(ValueError) as info:
        next(iter(loader))
    message = explain_error(info.value)
    assert message.startswith(f'cannot read image {broken!r} (item 1): '), message
    assert message.endswith(HINT) and '\n' not in message, message


def test_the_skip_log_does_not_repeat_the_advice(broken_folder):
    """SkipCorruptDataset logs each image it skips by the dataset's message: the
    advice to wrap the dataset is not in it."""
    root, broken = broken_folder
    with logged_messages(MMLogger.get_current_instance()) as logged:
        dataset = SkipCorruptDataset(ImageFolderDataset(root, image_size=16,
                                                        random_flip=False))
        assert dataset[1]['sample_idx'] == 2 and dataset.num_skipped == 1
    skipped = [m for m in logged if m.startswith('skipping unreadable item 1')]
    assert len(skipped) == 1 and broken in skipped[0], logged
    assert 'SkipCorruptDataset' not in skipped[0]
