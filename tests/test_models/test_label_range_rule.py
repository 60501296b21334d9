"""The class-label rule, one function for every place that takes labels: tools/infer.py's
and text2video's ``--labels``, a training batch (``LatentDiffusion``) and a latent store
(tools/train.py's checks). Each had its own copy, which differed: a one-class model's
batch and store let -2 through as class 0, and 1.5 passed as class 1 everywhere.
Also ``ImageFolderDataset``, whose ``data_prefix`` nothing set."""
import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmsora.diffusion  # noqa: F401
import mmsora.models  # noqa: F401
from mmsora.apis.inference import check_label_ids
from mmsora.utils.labels import check_label_range
from mmsora.datasets.store_checks import check_store_labels
from mmsora.registry import DATASETS, MODELS
from mmsora.utils.cli import UserError

CLASSES = 3


def tiny_model(num_classes=CLASSES):
    torch.manual_seed(0)
    denoiser = dict(type='DiT', input_size=8, patch_size=2, in_channels=4, hidden_size=32,
                    depth=2, num_heads=2, num_classes=num_classes, learn_sigma=True)
    return MODELS.build(dict(type='LatentDiffusion', denoiser=denoiser,
                             latent_shape=(4, 8, 8), num_classes=num_classes))


def refuse_labels(labels, num_classes=CLASSES):
    with pytest.raises(UserError) as info:
        check_label_ids(labels, num_classes)
    return str(info.value)


def refuse_batch(labels, num_classes=CLASSES):
    model = tiny_model(num_classes)
    with pytest.raises(ValueError) as info:
        model.loss(torch.randn(len(labels), 4, 8, 8), torch.tensor(labels))
    return str(info.value)


def store(tmp_path, labels, num_classes=CLASSES):
    """A store of one shard holding ``labels``, and a config of ``num_classes``."""
    np.save(tmp_path / 'labels_00000.npy', np.asarray(labels))
    cfg = Config(dict(model=dict(num_classes=num_classes,
                                 denoiser=dict(num_classes=num_classes))))
    return cfg, dict(shards=[dict(labels_file='labels_00000.npy')]), str(tmp_path)


def refuse_store(tmp_path, labels, num_classes=CLASSES):
    cfg, index, root = store(tmp_path, labels, num_classes)
    with pytest.raises(UserError) as info:
        check_store_labels(cfg, index, root)
    return str(info.value)


@pytest.mark.parametrize('bad, shown, what', [
    (-2, '[-2]', 'out of range: the model has 3 classes'),
    (CLASSES + 1, f'[{CLASSES + 1}]', 'out of range: the model has 3 classes'),
    (1.5, '[1.5]', 'are not class ids (whole numbers): the model has 3 classes'),
])
def test_the_three_places_refuse_the_same_labels_in_the_same_words(tmp_path, bad, shown,
                                                                   what):
    assert refuse_labels([0, bad]) == f'--labels {shown} {what}'
    assert refuse_batch([0, bad]).startswith(f"the batch's labels {shown} {what}")
    if bad == CLASSES + 1:
        # a store past the model's classes says the config change to make (its extremes:
        # a store holds millions of labels)
        assert refuse_store(tmp_path, [0, bad]) == (
            f"{tmp_path}: the store's labels go up to 4 but model.num_classes=3 (labels 0 "
            'to 2): set model.num_classes=5 and model.denoiser.num_classes=5')
    else:
        assert refuse_store(tmp_path, [0, bad]) == f"{tmp_path}: the store's labels {shown} {what}"


def test_a_one_class_model_takes_the_null_label_minus_one_and_no_other(tmp_path):
    """-1 marks a manifest row without a label (class 0 of an unconditional model);
    -2 was read as class 0 too (the batch clamped, the store took the lowest as 0)."""
    assert refuse_batch([0, -2], num_classes=1).startswith(
        "the batch's labels [-2] out of range: the model has 1 class")
    assert refuse_store(tmp_path, [-1, -2], num_classes=1) == (
        f"{tmp_path}: the store's labels [-2] out of range: the model has 1 class")
    model = tiny_model(num_classes=1)
    assert torch.isfinite(model.loss(torch.randn(2, 4, 8, 8), torch.tensor([-1, 0]))['loss'])
    check_store_labels(*store(tmp_path, [-1, 0, -1], num_classes=1))
    # --labels names classes to sample: the null label is none of them
    assert refuse_labels([-1], num_classes=1) == '--labels [-1] out of range: the model has 1 class'


def test_a_fractional_label_is_not_cut_to_a_class():
    """LatentDiffusion.sample read labels=[1.5] as class 1 (torch.as_tensor(..., long))."""
    model = tiny_model()
    with pytest.raises(ValueError, match=r'^labels \[1.5\] are not class ids \(whole numbers\): '
                                         r'the model has 3 classes$'):
        model.sample([0, 1.5], num_steps=2, seeds=[0, 1], decode=False)
    with pytest.raises(ValueError, match=r"^the batch's labels \[1.5\] are not class ids"):
        model.loss(torch.randn(2, 4, 8, 8), [0, 1.5])
    assert model.sample([0, 2.0], num_steps=2, seeds=[0, 1], decode=False).shape == (2, 4, 8, 8)


def test_the_rule_itself():
    check_label_range([0, 2], 3, '--labels')
    check_label_range(np.array([0, 1, 2], np.uint8), 3, '--labels')
    check_label_range([7], None, '--labels')  # the model's classes unknown
    check_label_range(torch.tensor([-1, 0]), 1, 'x', null=(-1,))
    with pytest.raises(ValueError, match=r'^x \[-1\] out of range: the model has 1 class$'):
        check_label_range(torch.tensor([-1, 0]), 1, 'x', error=ValueError)
    with pytest.raises(UserError, match=r"^x \['a'\] are not class ids"):
        check_label_range(['a'], 3, 'x')
    with pytest.raises(UserError, match=r'^x \[nan\] are not class ids'):
        check_label_range([float('nan')], 3, 'x')
    with pytest.raises(UserError, match=r'^x \[3, 4, 5, 6, 7, 8, 9, 10, ...\] out of range'):
        check_label_range(list(range(100)), 3, 'x')
    with pytest.raises(UserError, match=r'^x \[5\] out of range: the model has 3 classes; '
                                        r'fix it$'):
        check_label_range([5, 5], 3, 'x', explain=lambda sentence, bad: f'{sentence}; fix it')


def test_an_image_folder_is_read_from_data_root(tmp_path):
    """data_prefix (a folder under data_root) was an argument nothing set: data_root
    names the tree, as for the other datasets; mmengine's dict form (img_path=...) is
    refused, not joined into a path."""
    from PIL import Image
    for name in 'ab':
        (tmp_path / 'train' / name).mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(tmp_path / 'train' / name / 'x.png')
    dataset = DATASETS.build(dict(type='ImageFolderDataset', data_root=str(tmp_path / 'train'),
                                  image_size=8))
    assert dataset.classes == ['a', 'b'] and [y for _, y in dataset.samples] == [0, 1]
    with pytest.raises(TypeError, match='data_prefix'):
        DATASETS.build(dict(type='ImageFolderDataset', data_root=str(tmp_path),
                            data_prefix=dict(img_path='train'), image_size=8))
