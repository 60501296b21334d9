import pytest
import torch

from mmsora.registry import MODELS
from mmsora.utils.config_loading import load_config
from tests.sit_demo import DEMO, TINY


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A checkpoint of the tiny SiT demo (random weights)."""
    import mmsora.models  # noqa: F401
    from mmsora.utils.cfg_options import apply_cfg_options
    cfg = apply_cfg_options(load_config(DEMO), TINY)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    path = tmp_path_factory.mktemp('sit') / 'iter_1.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    return str(path)
