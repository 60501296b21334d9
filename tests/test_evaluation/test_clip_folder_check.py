"""CLIPEmbedder refuses a folder that is not a whole CLIP model, before loading it."""
import json

import pytest

pytest.importorskip('transformers')

from mmsora.evaluation import CLIPEmbedder, CLIPScore  # noqa: E402
from mmsora.utils.error_messages import explain_error
from tests.tiny_models import make_tiny_clip, make_tiny_text_encoder  # noqa: E402

NEED = ('not a whole CLIP model: the CLIP score needs a whole transformers CLIPModel '
        '(image and text towers) with its tokenizer, e.g. openai/clip-vit-large-patch14 '
        'saved locally')


def refusal(path, monkeypatch):
    """The one line CLIPScore's extractor gives for ``path``, transformers not reached."""
    import transformers

    def load(*args, **kwargs):
        raise AssertionError('the folder was loaded before it was checked')

    monkeypatch.setattr(transformers.CLIPModel, 'from_pretrained', load)
    metric = CLIPScore(extractor=dict(type='CLIPEmbedder', pretrained_path=path),
                       device='cpu')
    with pytest.raises(ValueError) as info:
        metric.extractor
    message = explain_error(info.value)
    assert message is not None and '\n' not in message
    return message


def test_t5_folder_is_refused(tmp_path, monkeypatch):
    """Before: loaded into a CLIPModel with a warning and a missing-key table; the
    score was 0.0000 and tools/test.py exited 0."""
    path = make_tiny_text_encoder(str(tmp_path / 't5'), kind='t5')
    assert refusal(path, monkeypatch) == (
        f"CLIP folder {path!r} holds a transformers T5EncoderModel (its config.json), "
        + NEED)


@pytest.mark.parametrize('kind, holds', [
    ('clip', 'CLIPTextModel'), ('clip_with_projection', 'CLIPTextModelWithProjection')])
def test_clip_text_encoder_folder_is_refused(tmp_path, monkeypatch, kind, holds):
    """A CLIP text encoder (extract_features.py --text-encoder-kind clip) has no image
    tower: before, it was random and the score 0.0000."""
    path = make_tiny_text_encoder(str(tmp_path / kind), kind=kind)
    assert refusal(path, monkeypatch) == (
        f'CLIP folder {path!r} holds a transformers {holds} (its config.json): a CLIP '
        'text encoder only (what extract_features.py --text-encoder-kind clip reads), '
        'no image tower, ' + NEED)


def test_folders_without_a_model_config_are_refused(tmp_path, monkeypatch):
    vae = tmp_path / 'vae'
    vae.mkdir()
    (vae / 'config.json').write_text(json.dumps({'_class_name': 'AutoencoderKL'}))
    assert refusal(str(vae), monkeypatch) == (
        f"CLIP folder {str(vae)!r} holds a diffusers AutoencoderKL (its config.json), "
        + NEED)
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert refusal(str(empty), monkeypatch).startswith(
        f'CLIP folder {str(empty)!r} has no config.json (not a transformers model '
        'folder): the CLIP score needs a whole transformers CLIPModel')


def test_whole_clip_folder_still_loads(tmp_path):
    path = make_tiny_clip(tmp_path / 'clip')
    embedder = CLIPEmbedder(path)
    assert embedder.encode_texts(['a red disk']).shape == (1, 8)


def test_the_folder_is_checked_before_any_sampling(tmp_path, monkeypatch):
    """check_inputs (tools/test.py's check before it samples) refuses the folder; the
    refusal came only once the first batch had been sampled and scored."""
    path = make_tiny_text_encoder(str(tmp_path / 't5'), kind='t5')
    metric = CLIPScore(extractor=dict(type='CLIPEmbedder', pretrained_path=path),
                       device='cpu')
    with pytest.raises(ValueError, match='holds a transformers T5EncoderModel'):
        metric.check_inputs(num_samples=4)
    assert metric._extractor is None
