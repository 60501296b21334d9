"""A diffusers DiT folder whose shard index (diffusion_pytorch_model.safetensors.index.json)
is cut short, empty or not diffusers' table: one line naming the index file. Before,
json.load's 'Expecting value: line 1 column 1 (char 0)' came out of every tool (a raw
JSONDecodeError, naming no file; a KeyError or AttributeError for other JSON)."""
import json
from types import SimpleNamespace

import pytest

from mmsora.models import DiT
from mmsora.utils.checkpoint import load_checkpoint_file
from mmsora.utils.cli import run_cli
from tests.test_models.test_dit import build_reference, rekey_reference, tiny_cfg

INDEX = 'diffusion_pytorch_model.safetensors.index.json'


@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
    """A tiny diffusers DiT saved in several shards, and its index's text."""
    cfg = tiny_cfg()
    ref = build_reference(cfg, seed=5)
    folder = tmp_path_factory.mktemp('sharded') / 'transformer'
    ref.save_pretrained(folder, max_shard_size='20KB')
    assert len(list(folder.glob('diffusion_pytorch_model-*.safetensors'))) > 1
    return cfg, ref, folder, (folder / INDEX).read_text()


@pytest.mark.parametrize('damage', ['cut', 'empty', 'list', 'no_map', 'empty_map',
                                    'map_list', 'not_names'])
def test_a_damaged_shard_index_is_named(sharded, tmp_path, capsys, damage):
    from mmsora.apis.inference import load_weights
    from tools.export_denoiser import main as export
    cfg, _, folder, text = sharded
    index = folder / INDEX
    spoilt = dict(cut=text[:len(text) // 2], empty='', list='[]',
                  no_map=json.dumps({'metadata': {}}),
                  empty_map=json.dumps({'weight_map': {}}),
                  map_list=json.dumps({'weight_map': ['a.safetensors']}),
                  not_names=json.dumps({'weight_map': {'pos_embed.proj.weight': 3}}))[damage]
    said = (f'{index}: the shard index is damaged (cut short, empty or not diffusers\' '
            'weight_map of the shards): copy it again, or save the model again '
            '(save_pretrained writes it beside the shards)')
    index.write_text(spoilt)
    try:
        with pytest.raises(ValueError) as info:
            load_checkpoint_file(str(folder))  # --load-from, pretrained_denoiser
        assert str(info.value) == said
        holder = SimpleNamespace(denoiser=DiT(**cfg).eval())
        with pytest.raises(ValueError) as info:
            load_weights(holder, str(folder))  # tools/infer.py's and tools/test.py's
        assert str(info.value) == said
        assert run_cli(lambda: export([str(folder), '--out', str(tmp_path / 'dit.pt')])) == 2
        assert capsys.readouterr().err == f'error: {said}\n'
    finally:
        index.write_text(text)


def test_a_whole_index_still_reads(sharded):
    cfg, ref, folder, _ = sharded
    state = load_checkpoint_file(str(folder))
    assert sorted(state) == sorted(rekey_reference(ref))
