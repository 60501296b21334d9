"""HFTextEncoder: local loading, padding mask, pooled output, frozen and out of state dicts."""
import pytest
import torch

from mmsora.models import HFTextEncoder
from tests.tiny_models import make_tiny_text_encoder

pytest.importorskip('transformers')


def test_t5_tokens_mask_and_padding_invariance(t5_dir):
    enc = HFTextEncoder(t5_dir, kind='t5', max_length=12)
    emb, mask, pooled = enc.encode(['a red disk', 'the cat runs in snow'])
    assert emb.shape == (2, 12, 32) and mask.shape == (2, 12) and pooled is None
    # 3 words + </s>, 5 words + </s>: the mask marks exactly the real tokens.
    assert mask.sum(1).tolist() == [4, 6]
    # T5 with an attention mask: a caption's real tokens do not depend on the padding.
    alone, mask1, _ = HFTextEncoder(t5_dir, kind='t5', max_length=6).encode(['a red disk'])
    torch.testing.assert_close(alone[0, :4], emb[0, :4], atol=1e-5, rtol=1e-5)
    assert enc.embed_dim == 32 and enc.pooled_dim is None


def test_micro_batches_give_the_same_result(t5_dir):
    caps = ['a red disk', 'blue ring', 'dog jumps', 'yellow cross on the road']
    full = HFTextEncoder(t5_dir, max_length=8).encode(caps)
    split = HFTextEncoder(t5_dir, max_length=8, micro_batch_size=3).encode(caps)
    torch.testing.assert_close(full[0], split[0])
    assert torch.equal(full[1], split[1])


@pytest.mark.parametrize('kind,pooled_dim', [('clip', 32), ('clip_with_projection', 16)])
def test_clip_pooled_and_hidden_layer(tmp_path, kind, pooled_dim):
    path = make_tiny_text_encoder(str(tmp_path), kind)
    enc = HFTextEncoder(path, kind=kind)
    emb, mask, pooled = enc.encode(['a green square'])
    assert emb.shape == (1, 77, 32) and pooled.shape == (1, pooled_dim)
    assert enc.pooled_dim == pooled_dim
    pre_norm, _, _ = HFTextEncoder(path, kind=kind, hidden_layer=-1).encode(['a green square'])
    assert not torch.allclose(pre_norm, emb)  # hidden_states[-1] is before the final norm


def test_pipeline_layout_frozen_and_not_in_state_dict(tmp_path):
    make_tiny_text_encoder(str(tmp_path / 'text_encoder'), 't5')
    # A diffusers pipeline keeps the tokenizer in its own folder.
    make_tiny_text_encoder(str(tmp_path / 'tokenizer'), 't5')
    enc = HFTextEncoder(str(tmp_path))
    enc.encode(['a cat'])
    assert len(enc.state_dict()) == 0 and len(list(enc.parameters())) == 0
    assert not any(p.requires_grad for p in enc.encoder.parameters())
    enc.train()
    assert not enc.encoder.training


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        HFTextEncoder(str(tmp_path / 'missing')).encode(['x'])
    with pytest.raises(FileNotFoundError, match='config.json'):
        HFTextEncoder(str(tmp_path)).encode(['x'])
    with pytest.raises(ValueError, match='kind must be one of'):
        HFTextEncoder(str(tmp_path), kind='bert')


def test_a_folder_without_weights_is_a_missing_file_of_the_folder(tmp_path, t5_dir):
    """A folder with config.json and no weights: transformers raised an OSError naming
    no folder, which stopped a training run at its first samples (SampleVisualizationHook
    warns and goes on for a missing file of the model's folders, as for a VAE's)."""
    import shutil
    folder = shutil.copytree(t5_dir, tmp_path / 't5')
    (folder / 'model.safetensors').unlink()
    with pytest.raises(FileNotFoundError, match=rf"^text encoder folder '{folder}' holds a "
                       r'config.json but no weights \(model.safetensors, '):
        HFTextEncoder(str(folder), max_length=8).encode(['x'])


def test_a_folder_of_another_kind_is_refused(tmp_path):
    """transformers loads a CLIP folder into a T5EncoderModel (and the reverse) with a
    warning and random weights: extraction then wrote a complete store of random
    caption embeddings. A CLIP text model without its projection as
    'clip_with_projection' gets a random projection the same way."""
    clip = make_tiny_text_encoder(str(tmp_path / 'clip'), 'clip')
    t5 = make_tiny_text_encoder(str(tmp_path / 't5'), 't5')
    with pytest.raises(ValueError, match=r"holds a 'clip_text_model' model \(its config.json"
                                         r"\), not a t5 encoder: give kind='clip'"):
        HFTextEncoder(clip).encode(['x'])
    with pytest.raises(ValueError, match=r"holds a 't5' model .*not a clip encoder: give "
                                         r"kind='t5'"):
        HFTextEncoder(t5, kind='clip').encode(['x'])
    with pytest.raises(ValueError, match=r'lacks 1 weight of a CLIPTextModelWithProjection '
                                         r'\(e.g. text_projection.weight\): they would be '
                                         'random'):
        HFTextEncoder(clip, kind='clip_with_projection').encode(['x'])
