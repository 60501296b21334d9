"""A DiT checkpoint saved through its DDP or torch.compile wrapper (every key
``module.*`` / ``_orig_mod.*``, as many DiT forks save it) was refused as another
model's weights: '32 missing (e.g. pos_embed); 32 not in the model (e.g.
module.pos_embed); build the model with the settings it was trained with'
(walk-through p)."""
import argparse
import copy
from types import SimpleNamespace

import pytest
import torch

from mmsora.apis.inference import load_weights
from mmsora.models import DiT
from mmsora.registry import MODELS
from mmsora.utils.weight_loading import load_dit_checkpoint
from mmsora.utils.cfg_options import apply_cfg_options
from mmsora.utils.config_loading import load_config
from tests.tiny_models import TINY_DEMO_OPTIONS

PREFIXES = ('module.', '_orig_mod.', 'module._orig_mod.')


@pytest.fixture(scope='module')
def tiny():
    """The tiny demo model's config, and random weights of its DiT (every entry
    non-zero, so that a weight left unloaded shows)."""
    from tests.conftest import REPO_ROOT
    cfg = load_config(f'{REPO_ROOT}/configs/dit/dit_tiny2_1xb32_1500_shapes16.py')
    apply_cfg_options(cfg, TINY_DEMO_OPTIONS)
    model = MODELS.build(copy.deepcopy(cfg.model))
    assert isinstance(model.denoiser, DiT)
    gen = torch.Generator().manual_seed(0)
    weights = {k: torch.randn(v.shape, generator=gen) + 1
               for k, v in model.denoiser.state_dict().items()}
    return cfg, weights


def _files(tmp_path, weights, prefix):
    """The weights saved by a fork: alone, and in fast-DiT's training layout."""
    wrapped = {prefix + k: v for k, v in weights.items()}
    raw, fast = tmp_path / 'raw.pt', tmp_path / 'fast_dit.pt'
    torch.save(wrapped, raw)
    torch.save({'model': wrapped, 'ema': wrapped, 'opt': {'state': {}, 'param_groups': []},
                'args': argparse.Namespace(model='DiT-XL/2')}, fast)
    return str(raw), str(fast)


def _assert_loaded(denoiser, weights):
    state = denoiser.state_dict()
    assert set(state) == set(weights)
    for k, v in weights.items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize('prefix', PREFIXES)
def test_wrapper_prefixes_are_taken_off_on_every_loading_path(tmp_path, tiny, prefix):
    cfg, weights = tiny
    for path in _files(tmp_path, weights, prefix):
        # the API for a bare DiT
        model = MODELS.build(copy.deepcopy(cfg.model))
        load_dit_checkpoint(model.denoiser, path)
        _assert_loaded(model.denoiser, weights)
        # tools/infer.py and tools/test.py (--checkpoint)
        holder = SimpleNamespace(denoiser=MODELS.build(copy.deepcopy(cfg.model)).denoiser)
        load_weights(holder, path)
        _assert_loaded(holder.denoiser, weights)
        # tools/train.py --load-from: its check before the Runner, then the load itself
        # (model.pretrained_denoiser, in init_weights)
        from mmsora.engine.load_from_checks import check_denoiser_file_matches
        check_denoiser_file_matches(model, path)
        model = MODELS.build({**copy.deepcopy(cfg.model), 'pretrained_denoiser': path})
        model.init_weights()
        _assert_loaded(model.denoiser, weights)


def test_a_prefix_only_some_keys_carry_is_the_model_s_own(tmp_path, tiny):
    """Only a prefix every key carries is a wrapper's: a file with some keys under
    ``module.`` is still refused as another model's weights."""
    cfg, weights = tiny
    mixed = {(f'module.{k}' if k == 'pos_embed' else k): v for k, v in weights.items()}
    torch.save(mixed, tmp_path / 'mixed.pt')
    model = MODELS.build(copy.deepcopy(cfg.model))
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. pos_embed\); 1 not in the model "
                                         r"\(e\.g\. module\.pos_embed\)"):
        load_dit_checkpoint(model.denoiser, str(tmp_path / 'mixed.pt'))
