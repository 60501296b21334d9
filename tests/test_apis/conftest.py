"""Fixtures of the Python API's tests."""
import os.path as osp

import pytest
import torch

from mmsora.apis import init_model
from tests.conftest import REPO_ROOT
from tests.tiny_models import DEMO, TINY_DEMO_OPTIONS


@pytest.fixture(scope='session')
def weights(tmp_path_factory):
    """Random weights of the tiny demo DiT, as a released-style file."""
    model, _ = init_model(osp.join(REPO_ROOT, DEMO), checkpoint=False,
                          cfg_options=TINY_DEMO_OPTIONS)
    path = tmp_path_factory.mktemp('weights') / 'dit.pt'
    torch.save(model.denoiser.state_dict(), path)
    return str(path)
